"""Fixtures shared by the ops tests: a real sshd on 127.0.0.1 started by scripts/sshd.sh, and a real `timetodo serve`
(SQLite) with an admin account, for the steps that talk to an app's API."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.e2e.server import ServerProcess, cli, server_env
from tests.support import PASSWORD, ROOT, Services, free_port, run_script
from timetodo.ops.adapters.transport import SSHTarget, SSHTransport, open_transport


@dataclass(frozen=True)
class Sshd:
    directory: Path
    port: int
    target: SSHTarget
    host_key: str  # "ssh-ed25519 AAAA..." as it belongs in known_hosts


@pytest.fixture
async def ssh(sshd: Sshd) -> AsyncIterator[SSHTransport]:
    """A real SSH transport to the module's sshd."""
    transport = await open_transport(sshd.target)
    assert isinstance(transport, SSHTransport)
    try:
        yield transport
    finally:
        await transport.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    directory = tmp_path_factory.mktemp("sshd")
    port = free_port()
    try:
        line = run_script("scripts/sshd.sh", "start", str(directory), str(port))
        fields = dict(item.split("=", 1) for item in line.split())
        assert fields["host"] == "127.0.0.1" and fields["port"] == str(port), line
        target = SSHTarget(
            host=fields["host"],
            port=int(fields["port"]),
            user=fields["user"],
            key_file=Path(fields["key"]),
            known_hosts=Path(fields["known_hosts"]),
            connect_timeout=5,
        )
        host_key = " ".join((directory / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        yield Sshd(directory, port, target, host_key)
    finally:
        subprocess.run(["bash", "scripts/sshd.sh", "stop", str(directory)], cwd=ROOT, capture_output=True, timeout=60)


APP_ADMIN = "ops-admin@example.com"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    work = tmp_path_factory.mktemp("ops-app")
    env = server_env(f"sqlite:///{work / 'data' / 'app.db'}", None, work / "data")
    env |= {"LOG_LEVEL": "WARNING", "LOGIN_ATTEMPTS_PER_MINUTE": "1000"}
    app = ServerProcess(env, work)
    try:
        app.wait_ready()
        made = cli({**env, "TIMETODO_PASSWORD": PASSWORD}, "user", "create", APP_ADMIN, "--admin")
        assert made.returncode == 0, made.stderr
        yield app, work / "data" / "uploads"
    finally:
        app.stop()


def redis_db(services: Services, index: int) -> str:
    return services.redis_url.rsplit("/", 1)[0] + f"/{index}"


@pytest.fixture
def pair(services: Services) -> Iterator[tuple[str, str, redis.Redis, redis.Redis]]:
    source_url, target_url = redis_db(services, 5), redis_db(services, 6)
    src, dst = redis.Redis.from_url(source_url), redis.Redis.from_url(target_url)
    src.flushdb()
    dst.flushdb()
    try:
        yield source_url, target_url, src, dst
    finally:
        src.flushdb()
        dst.flushdb()
        src.close()
        dst.close()
