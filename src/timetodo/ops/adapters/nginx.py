"""Render the nginx configuration that puts Time to DO instances behind one address (SPEC 3).

Two shapes come out of one renderer:

* a snippet for an existing nginx (`conf.d/*.conf`, i.e. inside its `http {}` block): two `map`s, the
  `upstream timetodo` group and the server block(s). `deploy/nginx/timetodo.conf` is this, rendered for
  docker compose, and a test keeps the committed file equal to the renderer's output;
* with `standalone=True`, a complete `nginx.conf` (pid, error log, temp paths, `events {}`, `http {}`) that an
  unprivileged user runs with `nginx -c FILE -p DIR` — what the tests and bare-metal installs use.

Decisions worth knowing:

* Upload size. The API enforces MAX_UPLOAD_MB on the *file* bytes exactly (and answers 413 with the JSON error
  envelope); nginx only sees the whole multipart body, which is the file plus the boundary lines, the part
  headers and any other form fields. `client_max_body_size` is therefore MAX_UPLOAD_MB + 1 MiB: a file of
  exactly MAX_UPLOAD_MB always reaches the app (the framing is well under 1 MiB: ~200 bytes per part), anything
  larger by more than that headroom is refused by nginx before it costs the app anything. Between the two, the
  app gives the precise answer. nginx's own 413 also carries the JSON envelope (`error_page 413`).
* Retries. `proxy_next_upstream error timeout http_502` with `proxy_next_upstream_tries 2`. nginx never passes
  a POST/PATCH/LOCK to the next server once the request was sent to one, unless `non_idempotent` is set; it does
  retry them when the connection could not be established (`error` before anything was sent: a restarting
  instance refuses the connection), which is the case that matters for rolling restarts and is always safe.
  `non_idempotent` is deliberately absent: "error" also covers a connection reset *after* the app received the
  request, and replaying a POST then could create a task twice. Such a rare request answers 503 and the client
  repeats it with the same `Idempotency-Key`, which the API deduplicates.
  `http_503` is deliberately absent too: the app's 503s are answers, not failures (maintenance mode refuses
  writes on every instance alike; /health/detailed reports a dependency), so retrying them is pointless, and
  since a retried status also counts against `max_fails`, a few maintenance-mode DELETEs would take every
  instance out of the group and turn the reads that maintenance mode keeps working into "no live upstreams".
* Upstream keep-alive connections are closed by nginx after 4 s idle, before Uvicorn's 5 s keep-alive timeout,
  so nginx never writes a request into a connection the app is closing.
* With `resolver` (docker compose: `127.0.0.11`), upstream host names are re-resolved while nginx runs
  (`server ... resolve`, nginx >= 1.27.3), so `docker compose up --scale app=N` and recreated containers are
  picked up without a reload.
* `/metrics` is answered only to `metrics_allow` (default: 127.0.0.1) and denied to everyone else.

Usage:
    python -m timetodo.ops.nginx --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 --listen 8080 > nginx.conf
    python -m timetodo.ops.nginx --upstream 127.0.0.1:8001 --listen 127.0.0.1:8080 --standalone --prefix /srv/ngx \\
        > /srv/ngx/nginx.conf && nginx -c /srv/ngx/nginx.conf -p /srv/ngx -e /srv/ngx/error.log
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

DEFAULT_METRICS_ALLOW: tuple[str, ...] = ("127.0.0.1",)
DEFAULT_ACME_WEBROOT = "/var/www/acme"
MULTIPART_HEADROOM_MB = 1
MAX_FAILS = 3
NEXT_UPSTREAM_TRIES = 2
FAIL_TIMEOUT = "10s"
UPSTREAM_KEEPALIVE = 32
# Uvicorn closes idle keep-alive connections after 5 s (its default timeout_keep_alive); nginx must give up first.
UPSTREAM_KEEPALIVE_TIMEOUT = "4s"
WS_TIMEOUT = "1h"
# Mozilla "intermediate" TLS 1.2 suites; TLS 1.3 suites are not configurable here and are all fine.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)
_UNSAFE = re.compile(r"[\s;{}'\"\\#$]")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_UPLOAD_LOCATION = r"^/api/v1/tasks/[^/]+/attachments$"


def _check_token(what: str, value: str) -> str:
    """Refuse values that would change the meaning of the configuration (spaces, `;`, braces, quotes, `$`)."""
    if not value or _UNSAFE.search(value):
        raise ValueError(f"{what} {value!r} is empty or contains whitespace, quotes, ';', '{{', '}}', '#' or '$'")
    return value


def _split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); the port is required."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"upstream {address!r} must be [IPv6]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"upstream {address!r} must be HOST:PORT")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"upstream {address!r} has no valid port")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_upstream(address: str) -> str:
    host, _ = _split_host_port(address)
    if not _is_ip(host) and not _HOSTNAME.match(host):
        raise ValueError(f"upstream {address!r}: {host!r} is neither an IP address nor a host name")
    return address


def _check_allow(entry: str) -> str:
    if entry == "unix:":
        return entry
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ValueError(f"metrics_allow entry {entry!r} is not an IP address or CIDR network") from exc
    return entry


def _check_port(what: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a TCP port")
    return port


def _listen(address: str | None, port: int, *extra: str) -> str:
    target = f"{address}:{port}" if address else str(port)
    return " ".join(("listen", target, *extra)) + ";"


def _indent(lines: Sequence[str], depth: int) -> list[str]:
    pad = "    " * depth
    return [f"{pad}{line}" if line else "" for line in lines]


def _proxy_headers(*, websocket: bool) -> list[str]:
    """Every location repeats these: a `proxy_set_header` in a location discards the inherited ones."""
    connection = "$timetodo_connection_upgrade" if websocket else '""'
    lines = [
        "proxy_pass http://timetodo;",
        "proxy_set_header Host $timetodo_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Request-ID $timetodo_request_id;",
    ]
    if websocket:
        lines.append("proxy_set_header Upgrade $http_upgrade;")
    lines.append(f"proxy_set_header Connection {connection};")
    return lines


def _location(match: str, body: Sequence[str]) -> list[str]:
    return [f"location {match} {{", *_indent(body, 1), "}"]


def _acme_location(acme_webroot: str) -> list[str]:
    return _location("^~ /.well-known/acme-challenge/", [f"root {acme_webroot};", "default_type text/plain;"])


def _health_location() -> list[str]:
    return _location(
        "= /nginx-health",
        ["access_log off;", "default_type text/plain;", 'return 200 "ok\\n";'],
    )


def _proxy_server_body(
    *, max_upload_mb: int, metrics_allow: Sequence[str], access_log: str | None, error_log: str | None
) -> list[str]:
    # Long on purpose: one nginx directive (or comment) per line, in the order nginx reads them; split up, the one
    # server block it renders would be scattered over several functions.
    body_mb = max_upload_mb + MULTIPART_HEADROOM_MB
    lines = ["server_tokens off;"]
    if access_log is not None:
        lines.append(f"access_log {access_log};")
    if error_log is not None:
        lines.append(f"error_log {error_log} warn;")
    lines += [
        "",
        f"# MAX_UPLOAD_MB={max_upload_mb} is enforced exactly by the app on the file bytes; +{MULTIPART_HEADROOM_MB} MiB"
        " here covers the multipart framing.",
        f"client_max_body_size {body_mb}m;",
        "",
        "# Bodies and responses stay in memory or stream: no temp files (nothing to fill a disk, and it works when",
        "# the temp directories are out of the workers' reach, e.g. a root-started nginx whose workers are nobody).",
        "client_body_buffer_size 1m;",
        "proxy_max_temp_file_size 0;",
        "",
        "proxy_http_version 1.1;",
        "proxy_connect_timeout 5s;",
        "proxy_send_timeout 60s;",
        "proxy_read_timeout 60s;",
        "# A connection refused/reset before the request was sent is retried for every method (safe: the app never",
        "# saw it); timeouts and 502 only for idempotent methods. No `non_idempotent`, no `http_503` (the app's 503",
        "# means maintenance or a dependency, the same on every instance): see timetodo.ops.nginx.",
        "proxy_next_upstream error timeout http_502;",
        f"proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};",
        "",
        "# nginx's own errors in the API's envelope (the app's own errors pass through untouched).",
        "error_page 413 @timetodo_payload_too_large;",
        "error_page 502 504 =503 @timetodo_unavailable;",
        "",
        *_location("/", _proxy_headers(websocket=False)),
        "",
        "# Uploads stream to the app as they arrive (the app writes them to disk chunk by chunk).",
        *_location(
            f"~ {_UPLOAD_LOCATION}",
            ["proxy_request_buffering off;", "proxy_read_timeout 300s;", *_proxy_headers(websocket=False)],
        ),
        "",
        "# WebSocket: the server pings every WS_PING_SECONDS, the long read timeout only bounds a dead peer.",
        *_location(
            "= /api/v1/ws",
            [
                f"proxy_read_timeout {WS_TIMEOUT};",
                f"proxy_send_timeout {WS_TIMEOUT};",
                "proxy_buffering off;",
                *_proxy_headers(websocket=True),
            ],
        ),
        "",
        "# Prometheus metrics are not public.",
        *_location(
            "= /metrics",
            [*(f"allow {entry};" for entry in metrics_allow), "deny all;", *_proxy_headers(websocket=False)],
        ),
        "",
        *_health_location(),
        "",
        *_location(
            "@timetodo_payload_too_large",
            [
                "default_type application/json;",
                'return 413 \'{"error":"payload_too_large","detail":"the request body is larger than '
                f"{body_mb} MB (files up to {max_upload_mb} MB)\"}}';",
            ],
        ),
        *_location(
            "@timetodo_unavailable",
            [
                "default_type application/json;",
                "add_header Retry-After 5 always;",
                'return 503 \'{"error":"service_unavailable","detail":"no application instance answered; '
                "retry shortly\"}';",
            ],
        ),
    ]
    return lines


def _redirect_server(
    *, listen_address: str | None, listen_port: int, server_name: str, tls_listen_port: int, acme_webroot: str
) -> list[str]:
    port = "" if tls_listen_port == 443 else f":{tls_listen_port}"
    body = [
        _listen(listen_address, listen_port, "default_server"),
        f"server_name {server_name};",
        "server_tokens off;",
        "",
        *_acme_location(acme_webroot),
        *_health_location(),
        *_location("/", [f"return 301 https://$host{port}$request_uri;"]),
    ]
    return ["server {", *_indent(body, 1), "}"]


def _tls_lines(certificate: str, key: str) -> list[str]:
    return [
        f"ssl_certificate {certificate};",
        f"ssl_certificate_key {key};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        f"ssl_ciphers {TLS12_CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:timetodo_tls:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
    ]


def _cli_args(
    *,
    upstreams: Sequence[str],
    listen_address: str | None,
    listen_port: int,
    server_name: str,
    max_upload_mb: int,
    tls_certificate: str | None,
    tls_certificate_key: str | None,
    tls_listen_port: int,
    metrics_allow: Sequence[str],
    resolver: str | None,
    acme_webroot: str,
    access_log: str | None,
    error_log: str | None,
) -> str:
    """The command line that renders the same configuration (written into the header)."""
    args = [f"--upstream {u}" for u in upstreams]
    args.append(f"--listen {listen_address}:{listen_port}" if listen_address else f"--listen {listen_port}")
    if server_name != "_":
        args.append(f"--server-name {server_name}")
    args.append(f"--max-upload-mb {max_upload_mb}")
    if tuple(metrics_allow) != DEFAULT_METRICS_ALLOW:
        args += [f"--metrics-allow {entry}" for entry in metrics_allow]
    if resolver:
        args.append(f"--resolver {resolver}")
    if tls_certificate and tls_certificate_key:
        args += [f"--tls-cert {tls_certificate}", f"--tls-key {tls_certificate_key}"]
        if tls_listen_port != 443:
            args.append(f"--tls-listen {tls_listen_port}")
    if acme_webroot != DEFAULT_ACME_WEBROOT:
        args.append(f"--acme-webroot {acme_webroot}")
    if access_log is not None:
        args.append(f"--access-log {access_log}")
    if error_log is not None:
        args.append(f"--error-log {error_log}")
    return " ".join(args)


def render_nginx_config(
    *,
    upstreams: list[str],
    listen_port: int = 80,
    server_name: str = "_",
    max_upload_mb: int = 25,
    tls_certificate: str | None = None,
    tls_certificate_key: str | None = None,
    metrics_allow: Sequence[str] = DEFAULT_METRICS_ALLOW,
    access_log: str | None = None,
    error_log: str | None = None,
    pid_file: str | None = None,
    standalone: bool = False,
    tls_listen_port: int = 443,
    listen_address: str | None = None,
    resolver: str | None = None,
    acme_webroot: str = DEFAULT_ACME_WEBROOT,
) -> str:
    """nginx configuration text for Time to DO behind nginx (see the module docstring for the choices).

    `upstreams` are `host:port` of app instances; `listen_address` (e.g. 127.0.0.1) restricts the listening
    sockets; with `tls_certificate`/`tls_certificate_key` the API is served over TLS on `tls_listen_port` and
    `listen_port` only redirects (except ACME HTTP-01 challenges, served from `acme_webroot`). `resolver` (a DNS
    server address) makes nginx re-resolve upstream host names while it runs (nginx >= 1.27.3).

    `standalone=True` returns a whole nginx.conf. Its pid file, logs and temp directories sit in the directory of
    `pid_file` (relative paths, resolved against nginx's `-p` prefix, when `pid_file` is not given).
    """
    # Over 60 lines only by its signature and docstring (the options are keywords, each named once); the body is
    # a check and five calls.
    _check_arguments(
        upstreams=upstreams,
        listen_port=listen_port,
        tls_listen_port=tls_listen_port,
        max_upload_mb=max_upload_mb,
        server_name=server_name,
        listen_address=listen_address,
        metrics_allow=metrics_allow,
        tls_certificate=tls_certificate,
        tls_certificate_key=tls_certificate_key,
        files={"access_log": access_log, "error_log": error_log, "pid_file": pid_file},
        acme_webroot=acme_webroot,
        resolver=resolver,
    )
    command = _cli_args(
        upstreams=upstreams,
        listen_address=listen_address,
        listen_port=listen_port,
        server_name=server_name,
        max_upload_mb=max_upload_mb,
        tls_certificate=tls_certificate,
        tls_certificate_key=tls_certificate_key,
        tls_listen_port=tls_listen_port,
        metrics_allow=metrics_allow,
        resolver=resolver,
        acme_webroot=acme_webroot,
        access_log=access_log,
        error_log=error_log,
    )
    header = [
        "# Time to DO behind nginx. Generated; do not edit by hand. Render it again with:",
        f"#   python -m timetodo.ops.nginx {command}{' --standalone' if standalone else ''}",
    ]

    proxy_body = _proxy_server_body(
        max_upload_mb=max_upload_mb,
        metrics_allow=metrics_allow,
        access_log=None if standalone else access_log,
        error_log=None if standalone else error_log,
    )
    servers = _servers(
        proxy_body,
        listen_address=listen_address,
        listen_port=listen_port,
        server_name=server_name,
        tls=(tls_certificate, tls_certificate_key) if tls_certificate and tls_certificate_key else None,
        tls_listen_port=tls_listen_port,
        acme_webroot=acme_webroot,
    )
    http_lines = [*_MAPS, "", *_upstream_block(upstreams, resolver), "", *servers]
    if not standalone:
        return "\n".join([*header, "", *http_lines]) + "\n"
    return _standalone_conf(header, http_lines, pid_file=pid_file, error_log=error_log, access_log=access_log)


_MAPS = [
    "map $http_upgrade $timetodo_connection_upgrade {",
    "    default upgrade;",
    "    ''      '';",
    "}",
    "",
    "# Keep the port the client used (redirects and absolute URLs built by the app stay right).",
    "map $http_host $timetodo_host {",
    "    default $http_host;",
    "    ''      $host;",
    "}",
    "",
    "# A client's X-Request-ID is passed on (the app validates it); otherwise nginx makes one.",
    "map $http_x_request_id $timetodo_request_id {",
    "    default $http_x_request_id;",
    "    ''      $request_id;",
    "}",
]


def _check_arguments(
    *,
    upstreams: list[str],
    listen_port: int,
    tls_listen_port: int,
    max_upload_mb: int,
    server_name: str,
    listen_address: str | None,
    metrics_allow: Sequence[str],
    tls_certificate: str | None,
    tls_certificate_key: str | None,
    files: dict[str, str | None],
    acme_webroot: str,
    resolver: str | None,
) -> None:
    """ValueError naming the first argument nginx would reject or misread (nothing is rendered from bad input)."""
    if not upstreams:
        raise ValueError("at least one upstream (HOST:PORT) is required")
    for upstream in upstreams:
        _check_upstream(upstream)
    _check_port("listen_port", listen_port)
    _check_port("tls_listen_port", tls_listen_port)
    if not 1 <= max_upload_mb <= 10240:
        raise ValueError(f"max_upload_mb {max_upload_mb} is outside 1..10240")
    _check_token("server_name", server_name)
    if listen_address is not None:
        if listen_address.startswith("[") and listen_address.endswith("]"):
            ipaddress.IPv6Address(listen_address[1:-1])
        elif not _is_ip(listen_address) or ":" in listen_address:
            raise ValueError(f"listen_address {listen_address!r} must be an IPv4 address or [IPv6]")
    if not metrics_allow:
        raise ValueError("metrics_allow needs at least one address (use 127.0.0.1 to keep /metrics local)")
    for entry in metrics_allow:
        _check_allow(entry)
    if (tls_certificate is None) != (tls_certificate_key is None):
        raise ValueError("tls_certificate and tls_certificate_key go together")
    for what, value in (
        ("tls_certificate", tls_certificate),
        ("tls_certificate_key", tls_certificate_key),
        *files.items(),
    ):
        if value is not None:
            _check_token(what, value)
    _check_token("acme_webroot", acme_webroot)
    if resolver is not None:
        _check_token("resolver", resolver)
    if tls_certificate and listen_port == tls_listen_port:
        raise ValueError("listen_port and tls_listen_port must differ")


def _upstream_block(upstreams: list[str], resolver: str | None) -> list[str]:
    upstream_block = ["upstream timetodo {"]
    upstream_body = ["zone timetodo 64k;", "least_conn;"]
    if resolver:
        upstream_body.append(f"resolver {resolver} valid=10s ipv6=off;")
        upstream_body.append("resolver_timeout 5s;")
    for upstream in upstreams:
        host, _ = _split_host_port(upstream)
        resolve = " resolve" if resolver and not _is_ip(host) else ""
        upstream_body.append(f"server {upstream} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT}{resolve};")
    upstream_body += [f"keepalive {UPSTREAM_KEEPALIVE};", f"keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};"]
    return [*upstream_block, *_indent(upstream_body, 1), "}"]


def _servers(
    proxy_body: list[str],
    *,
    listen_address: str | None,
    listen_port: int,
    server_name: str,
    tls: tuple[str, str] | None,
    tls_listen_port: int,
    acme_webroot: str,
) -> list[str]:
    """The server block(s): plain HTTP, or a redirect on `listen_port` and the API over TLS on `tls_listen_port`."""
    servers: list[str] = []
    if tls is not None:
        servers += _redirect_server(
            listen_address=listen_address,
            listen_port=listen_port,
            server_name=server_name,
            tls_listen_port=tls_listen_port,
            acme_webroot=acme_webroot,
        )
        servers.append("")
        tls_body = [
            _listen(listen_address, tls_listen_port, "ssl", "default_server"),
            f"server_name {server_name};",
            *_tls_lines(*tls),
            "",
            *proxy_body,
        ]
        servers += ["server {", *_indent(tls_body, 1), "}"]
    else:
        plain_body = [
            _listen(listen_address, listen_port, "default_server"),
            f"server_name {server_name};",
            *proxy_body,
            "",
            "# ACME HTTP-01 challenges (certbot --webroot), so a certificate can be obtained before TLS is on.",
            *_acme_location(acme_webroot),
        ]
        servers += ["server {", *_indent(plain_body, 1), "}"]
    return servers


def _standalone_conf(
    header: list[str], http_lines: list[str], *, pid_file: str | None, error_log: str | None, access_log: str | None
) -> str:
    """A whole nginx.conf around `http_lines`, its files next to `pid_file` (or relative to nginx's prefix)."""
    base = str(Path(pid_file).parent) + "/" if pid_file else ""
    pid = pid_file or "nginx.pid"
    main_lines = [
        *header,
        "",
        "worker_processes 1;",
        f"pid {pid};",
        f"error_log {error_log or base + 'error.log'} warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        *_indent(
            [
                f"access_log {access_log or base + 'access.log'};",
                f"client_body_temp_path {base}client_body_temp;",
                f"proxy_temp_path {base}proxy_temp;",
                f"fastcgi_temp_path {base}fastcgi_temp;",
                f"uwsgi_temp_path {base}uwsgi_temp;",
                f"scgi_temp_path {base}scgi_temp;",
                "default_type application/octet-stream;",
                "sendfile on;",
                "keepalive_timeout 65s;",
                "",
                *http_lines,
            ],
            1,
        ),
        "}",
    ]
    return "\n".join(main_lines) + "\n"
