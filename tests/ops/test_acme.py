"""Certificates from a real ACME server on loopback: pebble validates HTTP-01 against real nginx, which then serves
the certificate over TLS in front of a real `timetodo serve`; renewal reloads nginx through certbot's deploy hook.

pebble-challtestsrv answers every DNS name with 127.0.0.1, and pebble connects to nginx's HTTP port for the
challenge (the "port 80" of `api.timetodo.test` here). The client verifies the served chain against pebble's root.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.nginx import NGINX, NginxProcess
from tests.e2e.server import ServerProcess, server_env
from tests.support import free_port
from timetodo.ops.adapters.acme import Acme, AcmeError, install_renewal, obtain, renew
from timetodo.ops.adapters.transport import LocalTransport

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("certbot") is None, reason="certbot is not installed (scripts/test.sh installs it)"
    ),
]
ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "api.timetodo.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("acme")
    app = ServerProcess(server_env(f"sqlite:///{tmp / 'db.sqlite'}", None, tmp), tmp)
    app.wait_ready()
    # nginx's workers run unprivileged and cannot enter pytest's 0700 tmp: the webroot lives outside it
    webroot = Path(tempfile.mkdtemp(prefix="timetodo-acme-"))
    webroot.chmod(0o755)
    nginx = NginxProcess(tmp / "nginx", [f"127.0.0.1:{app.port}"], server_name=DOMAIN, acme_webroot=str(webroot))
    pebble_dir = tmp / "pebble"
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pebble.sh"), "start", str(pebble_dir), str(nginx.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    directory = started.stdout.strip().splitlines()[-1]
    mgmt = (pebble_dir / "mgmt_url").read_text().strip()
    pebble_api = ssl.create_default_context(cafile=str(pebble_dir / "ca.pem"))
    root_pem = httpx.get(f"{mgmt}/roots/0", verify=pebble_api).text
    acme = Acme(
        domains=(DOMAIN,),
        email="ops@timetodo.test",
        webroot=str(webroot),
        server=directory,
        config_dir=str(tmp / "le" / "config"),
        work_dir=str(tmp / "le" / "work"),
        logs_dir=str(tmp / "le" / "logs"),
        ca_bundle=str(pebble_dir / "ca.pem"),
    )
    try:
        yield {"tmp": tmp, "nginx": nginx, "acme": acme, "root": root_pem, "pebble": pebble_dir, "app": app}
    finally:
        nginx.stop()
        subprocess.run(["bash", str(ROOT / "scripts" / "pebble.sh"), "stop", str(pebble_dir)], timeout=30)
        shutil.rmtree(webroot, ignore_errors=True)
        assert app.stop() == 0


def _served_serial(port: int, root_pem: str) -> str:
    """The serial of the certificate nginx serves for DOMAIN, verified against pebble's root (name included)."""
    context = ssl.create_default_context(cadata=root_pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    return str(cert["serialNumber"]).upper().lstrip("0")


def _serial(hex_serial: str) -> str:
    return hex_serial.upper().lstrip("0")


async def test_certificate_obtained_served_and_renewed(stack: dict[str, object]) -> None:
    nginx, acme, root_pem, tmp = stack["nginx"], stack["acme"], stack["root"], stack["tmp"]
    assert isinstance(nginx, NginxProcess) and isinstance(acme, Acme) and isinstance(root_pem, str)
    assert isinstance(tmp, Path)
    transport = LocalTransport()

    first = await obtain(transport, acme)  # real HTTP-01: pebble fetched the challenge from nginx
    assert Path(first.path).is_file() and Path(first.key_path).is_file() and first.serial
    again = await obtain(transport, acme)  # a valid certificate is kept: no new order, no rate limit spent
    assert again.serial == first.serial

    tls_port = free_port()
    nginx.options.update(tls_certificate=first.path, tls_certificate_key=first.key_path, tls_listen_port=tls_port)
    nginx.reload(nginx.upstreams)
    assert _served_serial(tls_port, root_pem) == _serial(first.serial)
    context = ssl.create_default_context(cadata=root_pem)
    with httpx.Client(verify=context) as client:
        health = client.get(f"https://127.0.0.1:{tls_port}/health", extensions={"sni_hostname": DOMAIN})
        assert health.status_code == 200  # the app behind nginx, over a certificate the client trusts
        # port 80 keeps serving the challenge and redirects everything else to https
        plain = client.get(f"{nginx.url}/api/v1/tasks", headers={"Host": DOMAIN})
        assert plain.status_code == 301 and plain.headers["location"].startswith(f"https://{DOMAIN}:{tls_port}/")

    reload_command = f"{NGINX} -s reload -c {nginx.conf} -p {nginx.dir}"
    scheduler = await install_renewal(transport, acme, reload_command, cron_dir=str(tmp))
    assert scheduler == f"cron ({tmp}/timetodo-certbot)"  # certificates outside /etc/letsencrypt: our own job
    cron = (tmp / "timetodo-certbot").read_text()
    assert "certbot renew" in cron and f"--config-dir {acme.config_dir}" in cron

    renewed = await renew(transport, acme, force_renewal=True)  # what the job runs, deploy hook included
    assert renewed.serial != first.serial
    deadline = time.monotonic() + 15
    while _served_serial(tls_port, root_pem) != _serial(renewed.serial):  # the hook reloaded nginx
        assert time.monotonic() < deadline, "nginx still serves the old certificate after renewal"
        time.sleep(0.2)


async def test_failed_challenges_name_dns_or_port_80(stack: dict[str, object]) -> None:
    acme, pebble_dir, nginx = stack["acme"], stack["pebble"], stack["nginx"]
    assert isinstance(acme, Acme) and isinstance(pebble_dir, Path) and isinstance(nginx, NginxProcess)
    transport = LocalTransport()
    dns_mgmt = (pebble_dir / "dns_mgmt_url").read_text().strip()
    other = Acme(**{**acme.__dict__, "domains": ("nowhere.timetodo.test",)})
    httpx.post(f"{dns_mgmt}/set-default-ipv4", json={"ip": ""}).raise_for_status()
    try:
        with pytest.raises(AcmeError) as dns:
            await obtain(transport, other)
    finally:
        httpx.post(f"{dns_mgmt}/set-default-ipv4", json={"ip": "127.0.0.1"}).raise_for_status()
    assert "DNS" in str(dns.value) and "DNS record" in dns.value.hint

    nginx.stop()  # nothing listens on the challenge port any more
    down = Acme(**{**acme.__dict__, "domains": ("down.timetodo.test",)})
    with pytest.raises(AcmeError) as port:
        await obtain(transport, down)
    assert "port 80" in str(port.value) and "port 80" in port.value.hint

    with pytest.raises(ValueError, match="domains"):
        Acme(domains=("127.0.0.1",), email="ops@timetodo.test")
    with pytest.raises(ValueError, match="email"):
        Acme(domains=(DOMAIN,), email="not-an-address")
