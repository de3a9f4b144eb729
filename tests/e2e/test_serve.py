"""The real `timetodo serve` process over HTTP: two instances sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import TIMETODO, ServerProcess, cli
from tests.support import PASSWORD, next_client_ip, unique_email
from timetodo.core.schema import head_revision

pytestmark = pytest.mark.slow


def test_sqlite_default_server_works(tmp_path: Path) -> None:
    """No configuration at all: SQLite in ./data, in-process cache; a full register → task round trip."""
    server = ServerProcess({"SECRET_KEY": "x" * 40}, tmp_path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url) as c:
            assert c.post("/api/v1/auth/register", json={"email": "a@b.io", "password": PASSWORD}).status_code == 201
            token = c.post("/api/v1/auth/login", data={"username": "a@b.io", "password": PASSWORD}).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            assert c.post("/api/v1/tasks", json={"title": "x"}, headers=headers).status_code == 201
            assert c.get("/health/detailed").json()["checks"]["database"]["dialect"] == "sqlite"
            assert c.get("/docs").status_code == 200
        assert (tmp_path / "data" / "timetodo.db").exists()
        assert "single process only" in server.log()
    finally:
        assert server.stop() == 0


def test_login_limit_shared_by_two_instances(two_servers: list[ServerProcess]) -> None:
    email = unique_email()
    with httpx.Client(base_url=two_servers[0].url) as c:
        assert c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
    statuses = []
    for attempt in range(6):
        server = two_servers[attempt % 2]
        resp = httpx.post(
            f"{server.url}/api/v1/auth/login",
            data={"username": email, "password": "wrong-password"},
            headers={"X-Forwarded-For": next_client_ip()},  # a new address each time: the account limit trips
        )
        statuses.append(resp.status_code)
    assert statuses == [401] * 5 + [429], statuses
    assert int(resp.headers["Retry-After"]) >= 1


def test_no_write_commits_after_maintenance_on_returns(
    two_servers: list[ServerProcess], pg_env: dict[str, str]
) -> None:
    """Writers hammer both instances; `timetodo maintenance on` returns; from then on the task count is frozen."""
    email = unique_email()
    base = two_servers[0].url
    with httpx.Client(base_url=base) as c:
        c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        tokens = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    async def count() -> int:
        async with httpx.AsyncClient(base_url=base, headers=headers) as c:
            total, cursor = 0, None
            while True:
                params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
                page = (await c.get("/api/v1/tasks", params=params)).json()
                total += len(page["results"])
                cursor = page["next_cursor"]
                if not cursor:
                    return total

    async def scenario() -> tuple[int, int, dict[int, int], dict[int, int]]:
        stop = asyncio.Event()
        before: dict[int, int] = {}
        after: dict[int, int] = {}
        frozen_flag = asyncio.Event()

        async def writer(url: str) -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as c:
                while not stop.is_set():
                    resp = await c.post("/api/v1/tasks", json={"title": "w"})
                    bucket = after if frozen_flag.is_set() else before
                    bucket[resp.status_code] = bucket.get(resp.status_code, 0) + 1

        writers = [asyncio.create_task(writer(s.url)) for s in two_servers for _ in range(3)]
        await asyncio.sleep(1.0)
        proc = await asyncio.create_subprocess_exec(
            TIMETODO,
            "maintenance",
            "on",
            "--reason",
            "e2e",
            env={**os.environ, **pg_env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err
        frozen_flag.set()
        frozen = await count()
        await asyncio.sleep(2.5)  # longer than the per-process flag cache
        stop.set()
        await asyncio.gather(*writers)
        return frozen, await count(), before, after

    try:
        frozen, final, before, after = asyncio.run(scenario())
    finally:
        assert cli(pg_env, "maintenance", "off").returncode == 0
    assert before.get(201, 0) > 0, before
    assert after.get(503, 0) > 0, after
    assert final == frozen, (frozen, final, before, after)
    assert set(after) <= {201, 503}, after  # a 201 after `on` is one that committed before it (counted in frozen)
    # writes resume once every instance's cached copy of the flag has expired (MAINTENANCE_CACHE_SECONDS=1)
    with httpx.Client(base_url=base, headers=headers) as c:
        deadline = time.monotonic() + 5
        while (status := c.post("/api/v1/tasks", json={"title": "after"}).status_code) == 503:
            assert time.monotonic() < deadline, "writes still refused 5 s after maintenance off"
            time.sleep(0.2)
        assert status == 201


def test_cli_maintenance_and_db(pg_env: dict[str, str], two_servers: list[ServerProcess]) -> None:
    current = cli(pg_env, "db", "current")
    assert current.returncode == 0 and f"current: {head_revision()}" in current.stdout
    status = cli(pg_env, "maintenance", "status")
    assert status.returncode == 0 and "maintenance off" in status.stdout
    bad = cli({**pg_env, "ENVIRONMENT": "production", "SECRET_KEY": "change-me"}, "maintenance", "status")
    assert bad.returncode == 2 and "SECRET_KEY" in bad.stderr
    bad_url = cli({**pg_env, "DATABASE_URL": "mysql://x"}, "db", "current")
    assert bad_url.returncode == 2 and "DATABASE_URL" in bad_url.stderr
    down = cli({**pg_env, "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x"}, "db", "current")
    assert down.returncode == 3 and "database unreachable" in down.stderr
    os.environ.pop("TIMETODO_PASSWORD", None)
    created = cli({**pg_env, "TIMETODO_PASSWORD": PASSWORD}, "user", "create", unique_email("admin"), "--admin")
    assert created.returncode == 0 and "(admin)" in created.stdout
    dup = cli({**pg_env, "TIMETODO_PASSWORD": PASSWORD}, "user", "create", created.stdout.split()[3])
    assert dup.returncode == 4


def test_metrics_with_several_workers(pg_env: dict[str, str], tmp_path: Path) -> None:
    """Two Uvicorn workers: /metrics sums every worker's counters (prometheus multiprocess mode)."""
    server = ServerProcess({**pg_env, "DATA_DIR": str(tmp_path)}, tmp_path, workers=2)
    try:
        server.wait_ready()
        n = 40
        with httpx.Client(base_url=server.url) as c:
            for _ in range(n):
                c.get("/health", headers={"Connection": "close"})
            for _ in range(20):
                text = c.get("/metrics", headers={"Connection": "close"}).text
                match = re.search(
                    r'timetodo_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)', text
                )
                assert match, text[:2000]
                assert float(match.group(1)) >= n
        assert "timetodo_db_pool_connections" in text
    finally:
        assert server.stop() == 0, server.log()


def _pids_on(port: int, state: str) -> collections.Counter[int]:
    out = subprocess.run(
        ["ss", "-Htnp", "state", state, f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return collections.Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def _get_health(port: int, sock: socket.socket | None = None) -> bytes:
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=300)  # a worker starts in 30 s+ under load
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock.recv(65536)


def test_workers_get_their_share_of_connections_and_a_dead_worker_is_replaced(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    """`serve --workers 2`: a listening socket per worker (SO_REUSEPORT, timetodo.cli.reuseport). 32 keep-alive
    connections opened at once spread over both workers (with one shared socket, one worker often took them all);
    a worker killed with SIGKILL is replaced on its own socket, and the connections the kernel queued there meanwhile
    are served, not reset."""
    server = ServerProcess({**pg_env, "DATA_DIR": str(tmp_path)}, tmp_path, workers=2)
    try:
        server.wait_ready()
        workers = set(_pids_on(server.port, "listening")) - {server.proc.pid}
        assert len(workers) == 2, workers
        connections = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(32)]
        try:
            for sock in connections:
                assert _get_health(server.port, sock).startswith(b"HTTP/1.1 200")
            spread = _pids_on(server.port, "established")
            assert set(spread) == workers and max(spread.values()) <= 24, spread
        finally:
            for sock in connections:
                sock.close()
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        answers = [_get_health(server.port) for _ in range(16)]  # some land on the victim's socket
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = set(_pids_on(server.port, "listening")) - {server.proc.pid}
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now, now
    finally:
        assert server.stop() == 0, server.log()


def test_serve_refuses_a_port_another_server_listens_on(pg_env: dict[str, str], tmp_path: Path) -> None:
    """With a socket per worker, a second server on the same port must not join the first one's SO_REUSEPORT group
    (it would silently take a share of its connections): it fails to start, as with uvicorn's shared socket."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**pg_env, "DATA_DIR": str(tmp_path)}
        result = subprocess.run(
            [TIMETODO, "serve", "--port", str(port), "--workers", "2", "--no-migrate"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode != 0
    assert "cannot listen" in result.stderr, result.stderr
