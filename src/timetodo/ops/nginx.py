"""`python -m timetodo.ops.nginx` (documented; the same as `timetodo nginx render`): the command-line options of the
renderer, which lives in `timetodo.ops.adapters.nginx`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from timetodo.ops.adapters.nginx import DEFAULT_ACME_WEBROOT, DEFAULT_METRICS_ALLOW, render_nginx_config

__all__ = ["build_parser", "main", "render_nginx_config"]


def _parse_listen(value: str) -> tuple[str | None, int]:
    address, sep, port = value.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not PORT or ADDRESS:PORT")
    return (address if sep else None), int(port)


def build_parser(prog: str = "python -m timetodo.ops.nginx") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the nginx configuration for Time to DO instances behind nginx.",
        epilog="Example: python -m timetodo.ops.nginx --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 "
        "--listen 8080 --max-upload-mb 25 > nginx.conf",
    )
    parser.add_argument(
        "--upstream", action="append", required=True, metavar="HOST:PORT", help="an app instance (repeatable)"
    )
    parser.add_argument(
        "--listen", type=_parse_listen, default=(None, 80), metavar="[ADDRESS:]PORT", help="HTTP listen (80)"
    )
    parser.add_argument("--server-name", default="_", help="server_name (default: _ = any host)")
    parser.add_argument("--max-upload-mb", type=int, default=25, help="the app's MAX_UPLOAD_MB (default 25)")
    parser.add_argument("--tls-cert", metavar="PATH", help="certificate chain (PEM); enables HTTPS")
    parser.add_argument("--tls-key", metavar="PATH", help="private key (PEM) of --tls-cert")
    parser.add_argument("--tls-listen", type=int, default=443, metavar="PORT", help="HTTPS port (443)")
    parser.add_argument("--acme-webroot", default=DEFAULT_ACME_WEBROOT, help="root for ACME HTTP-01 challenges")
    parser.add_argument(
        "--metrics-allow",
        action="append",
        metavar="ADDRESS|CIDR",
        help="who may read /metrics (repeatable; default 127.0.0.1 only)",
    )
    parser.add_argument("--resolver", metavar="ADDRESS", help="DNS server to re-resolve upstream names (docker)")
    parser.add_argument("--access-log", metavar="PATH|off", help="access_log target")
    parser.add_argument("--error-log", metavar="PATH", help="error_log target")
    parser.add_argument("--standalone", action="store_true", help="a complete nginx.conf, runnable as non-root")
    parser.add_argument(
        "--prefix", type=Path, metavar="DIR", help="with --standalone: put pid, logs and temp dirs in DIR"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    *,
    prog: str = "python -m timetodo.ops.nginx",
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    listen_address, listen_port = args.listen
    pid_file: str | None = None
    if args.prefix is not None:
        if not args.standalone:
            parser.error("--prefix needs --standalone")
        prefix = args.prefix.resolve()
        prefix.mkdir(parents=True, exist_ok=True)
        pid_file = str(prefix / "nginx.pid")
    try:
        text = render_nginx_config(
            upstreams=args.upstream,
            listen_port=listen_port,
            listen_address=listen_address,
            server_name=args.server_name,
            max_upload_mb=args.max_upload_mb,
            tls_certificate=args.tls_cert,
            tls_certificate_key=args.tls_key,
            tls_listen_port=args.tls_listen,
            acme_webroot=args.acme_webroot,
            metrics_allow=args.metrics_allow or DEFAULT_METRICS_ALLOW,
            resolver=args.resolver,
            access_log=args.access_log,
            error_log=args.error_log,
            pid_file=pid_file,
            standalone=args.standalone,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
