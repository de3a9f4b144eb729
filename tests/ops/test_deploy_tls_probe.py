"""Deploy's health probe with TLS on (issue 12 item 3): once the bundle's nginx terminates TLS, port 80 only
redirects, so the probe asks `https://<PUBLIC_BASE_URL's name>/health/detailed`, connected to 127.0.0.1 on the
target and verifying the certificate for that name, exactly as a client will once DNS points there.

Run for real: an HTTPS server on 127.0.0.1 with a certificate for `todo.timetodo.test` issued by a throwaway CA (the
`cryptography` package), the probe command run by `LocalTransport` with curl, and with python3 only (no curl).
A certificate for another name, or from a CA the probe does not trust, is never taken for healthy.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from timetodo.ops.adapters.transport import LocalTransport
from timetodo.ops.migrate.deploy import ComposeRuntime, DeployError

NAME = "todo.timetodo.test"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(folder: Path, label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {label}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_leaf(folder: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str) -> tuple[Path, Path]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


class _Health(http.server.BaseHTTPRequestHandler):
    seen_hosts: list[str] = []

    def do_GET(self) -> None:
        self.seen_hosts.append(self.headers.get("Host", ""))
        body = json.dumps({"status": "ok", "checks": {"database": {"ok": True}}}).encode()
        self.send_response(200 if self.path == "/health/detailed" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def https_server(cert: Path, key: Path) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def tls_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "nginx").mkdir(parents=True)
    (bundle / "docker-compose.yml").write_text("services: {}\n")
    (bundle / "nginx" / "timetodo.conf").write_text(
        "server { listen 443 ssl; ssl_certificate /etc/letsencrypt/live/x/fullchain.pem; }\n"
    )
    return bundle


def _runtime(bundle: Path, ca: Path | None) -> ComposeRuntime:
    return ComposeRuntime(
        LocalTransport(),
        "/opt/timetodo",
        bundle_dir=bundle,
        image_source="pull",
        image="x:1",
        probe_ca_file=str(ca) if ca else None,
    )


async def test_probe_uses_https_for_the_public_name(tls_bundle: Path, tmp_path: Path) -> None:
    ca, ca_key, ca_path = make_ca(tmp_path, "ours")
    cert, key = make_leaf(tmp_path, ca, ca_key, NAME)
    with https_server(cert, key) as port:
        runtime = _runtime(tls_bundle, ca_path)
        runtime.configure_probe(f"PUBLIC_BASE_URL=https://{NAME}\nHTTPS_PORT={port}\n")
        assert runtime.health_url == f"https://{NAME}:{port}/health/detailed"
        _Health.seen_hosts = []
        report = await runtime.wait_healthy(20)
        assert report["status"] == "ok" and _Health.seen_hosts[-1].startswith(NAME)  # curl, name verified

        # a host without curl: python3's ssl does the same
        no_curl = tmp_path / "no-curl"
        no_curl.mkdir()
        (no_curl / "python3").symlink_to(sys.executable)
        out = subprocess.run(
            ["/bin/sh", "-c", runtime._probe_command()], env={"PATH": str(no_curl)}, capture_output=True, text=True
        )
        assert out.stdout.rstrip().splitlines()[-1] == "200", out
        assert json.loads(out.stdout.rstrip().splitlines()[0])["status"] == "ok"

        # a CA the probe does not trust: never healthy, with the TLS error in the message
        _, _, other_ca = make_ca(tmp_path, "other")
        untrusting = _runtime(tls_bundle, other_ca)
        untrusting.configure_probe(f"PUBLIC_BASE_URL=https://{NAME}\nHTTPS_PORT={port}\n")
        with pytest.raises(DeployError) as caught:
            await untrusting.wait_healthy(1)
        assert caught.value.step == "health" and "no HTTP answer" in str(caught.value)
        out = subprocess.run(
            ["/bin/sh", "-c", untrusting._probe_command()], env={"PATH": str(no_curl)}, capture_output=True, text=True
        )
        assert out.stdout.rstrip().splitlines()[-1] == "0" and "CERTIFICATE_VERIFY_FAILED" in out.stdout


async def test_probe_refuses_a_certificate_for_another_name(tls_bundle: Path, tmp_path: Path) -> None:
    ca, ca_key, ca_path = make_ca(tmp_path, "ours")
    cert, key = make_leaf(tmp_path, ca, ca_key, "elsewhere.timetodo.test")
    with https_server(cert, key) as port:
        runtime = _runtime(tls_bundle, ca_path)
        runtime.configure_probe(f"PUBLIC_BASE_URL=https://{NAME}\nHTTPS_PORT={port}\n")
        with pytest.raises(DeployError) as caught:
            await runtime.wait_healthy(1)
        assert "no HTTP answer" in str(caught.value)


def test_probe_without_tls_stays_on_http_and_tls_needs_an_https_url(tls_bundle: Path, tmp_path: Path) -> None:
    runtime = _runtime(tls_bundle, None)
    with pytest.raises(DeployError, match="PUBLIC_BASE_URL") as caught:
        runtime.configure_probe("PUBLIC_BASE_URL=http://todo.timetodo.test\n")
    assert caught.value.step == "config"
    (tls_bundle / "nginx" / "timetodo.conf").write_text("server { listen 80; }\n")
    runtime.configure_probe(f"PUBLIC_BASE_URL=https://{NAME}\nHTTP_PORT=8080\n")
    assert runtime.health_url == "http://127.0.0.1:8080/health/detailed" and runtime.tls_name is None
