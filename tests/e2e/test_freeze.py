"""The maintenance freeze holds: every kind of write, on two real `timetodo serve` instances, while maintenance is
switched on; from the moment `timetodo maintenance on` returns until `off`, no table and no stored upload changes.

Also: a worker killed in the middle of a request with an Idempotency-Key leaves no claimed-but-empty key behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.server import TIMETODO, ServerProcess, cli, server_env
from tests.support import PASSWORD, Services, create_database, unique_email

pytestmark = pytest.mark.slow

HAMMER_BEFORE = 1.5
HAMMER_FROZEN = 2.5  # longer than the per-process flag cache (1 s) and the reminder poll (1 s)
CLIENTS_PER_INSTANCE = 6


def own_redis_db(url: str, db: int) -> str:
    """The same Redis server, another database: login counters of these tests do not limit other tests."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def table_checksums(database_url: str) -> dict[str, str]:
    """A digest of every row of every table (but the maintenance flag's own row)."""
    sums: dict[str, str] = {}
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for name in sorted(names):
                if name == "app_state":
                    continue
                rows = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{name}"'))
                sums[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        finally:
            con.close()
        return sums
    conn = await asyncpg.connect(_plain(database_url))
    try:
        names = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for name in sorted(names):
            if name == "app_state":
                continue
            sums[name] = await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \"{name}\" t"
            )
    finally:
        await conn.close()
    return sums


def upload_listing(upload_dir: Path) -> list[tuple[str, int]]:
    """Every stored blob (partial uploads in .incoming are not data)."""
    if not upload_dir.is_dir():
        return []
    return sorted(
        (str(p.relative_to(upload_dir)), p.stat().st_size)
        for p in upload_dir.rglob("*")
        if p.is_file() and ".incoming" not in p.parts
    )


@contextlib.contextmanager
def two_instances(env: dict[str, str], workdir: Path) -> Iterator[list[ServerProcess]]:
    first = ServerProcess(env, workdir)
    try:
        first.wait_ready()
        second = ServerProcess(env, workdir)
        try:
            second.wait_ready()
            yield [first, second]
        finally:
            assert second.stop() == 0, second.log()
    finally:
        assert first.stop() == 0, first.log()


@pytest.fixture(params=["sqlite", "postgres"])
def freeze_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return server_env(f"sqlite:///{tmp_path / 'data' / 'freeze.db'}", None, tmp_path / "data")
    services: Services = request.getfixturevalue("services")
    db_url = asyncio.run(create_database(services.postgres_url))
    return server_env(db_url, own_redis_db(services.redis_url, 7), tmp_path / "data")


class Client:
    """One user hammering one instance with every kind of write."""

    def __init__(self, http: httpx.AsyncClient, statuses: Counter[int]) -> None:
        self.http = http
        self.statuses = statuses
        self.tokens: dict[str, Any] = {}
        self.tasks: list[int] = []
        self.keys: list[tuple[str, str]] = []

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        resp = await self.http.request(method, url, **kw)
        self.statuses[resp.status_code] += 1
        return resp

    async def setup(self) -> None:
        email = unique_email("freeze")
        await self.call("POST", "/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        resp = await self.call("POST", "/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        self.tokens = resp.json()
        self.email = email

    async def step(self) -> None:
        op = random.choice(
            [
                self.create_task,
                self.create_task,
                self.idempotent_task,
                self.idempotent_task,
                self.idempotent_task,
                self.update_task,
                self.complete_task,
                self.delete_task,
                self.project,
                self.timer,
                self.upload,
                self.reminder,
                self.register,
                self.login_logout,
                self.refresh,
                self.refresh,
                self.profile,
                self.time_entry,
            ]
        )
        await op()

    async def create_task(self) -> None:
        resp = await self.call("POST", "/api/v1/tasks", json={"title": "t", "labels": ["x"]}, headers=self.auth)
        if resp.status_code == 201:
            self.tasks.append(resp.json()["id"])

    async def idempotent_task(self) -> None:
        if self.keys and random.random() < 0.5:
            key, title = random.choice(self.keys)
        else:
            key, title = uuid.uuid4().hex, f"idem-{random.randint(0, 9)}"
            self.keys.append((key, title))
        await self.call("POST", "/api/v1/tasks", json={"title": title}, headers={**self.auth, "Idempotency-Key": key})

    def _task(self) -> int | None:
        return random.choice(self.tasks) if self.tasks else None

    async def update_task(self) -> None:
        if (task := self._task()) is not None:
            await self.call("PATCH", f"/api/v1/tasks/{task}", json={"title": uuid.uuid4().hex}, headers=self.auth)

    async def complete_task(self) -> None:
        if (task := self._task()) is not None:
            await self.call("POST", f"/api/v1/tasks/{task}/complete", headers=self.auth)

    async def delete_task(self) -> None:
        if (task := self._task()) is not None:
            await self.call("DELETE", f"/api/v1/tasks/{task}", headers=self.auth)

    async def project(self) -> None:
        await self.call("POST", "/api/v1/projects", json={"name": uuid.uuid4().hex[:12]}, headers=self.auth)

    async def timer(self) -> None:
        if random.random() < 0.5:
            await self.call("POST", "/api/v1/timer/start", json={"note": "n"}, headers=self.auth)
        else:
            await self.call("POST", "/api/v1/timer/stop", headers=self.auth)

    async def time_entry(self) -> None:
        start = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=random.randint(0, 10**6))
        body = {"started_at": start.isoformat(), "ended_at": (start + timedelta(minutes=1)).isoformat()}
        await self.call("POST", "/api/v1/time-entries", json=body, headers=self.auth)

    async def upload(self) -> None:
        if (task := self._task()) is not None:
            content = os.urandom(2048)
            headers = {**self.auth, "Idempotency-Key": uuid.uuid4().hex} if random.random() < 0.5 else self.auth
            await self.call(
                "POST", f"/api/v1/tasks/{task}/attachments", files={"file": ("f.bin", content)}, headers=headers
            )

    async def reminder(self) -> None:
        if (task := self._task()) is not None:
            at = datetime.now(UTC) + timedelta(seconds=random.uniform(0.2, 3))
            await self.call(
                "POST", f"/api/v1/tasks/{task}/reminders", json={"remind_at": at.isoformat()}, headers=self.auth
            )

    async def register(self) -> None:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if random.random() < 0.5 else {}
        body = {"email": unique_email("reg"), "password": PASSWORD}
        await self.call("POST", "/api/v1/auth/register", json=body, headers=headers)

    async def login_logout(self) -> None:
        resp = await self.call("POST", "/api/v1/auth/login", data={"username": self.email, "password": PASSWORD})
        if resp.status_code == 200 and resp.json().get("refresh_token"):
            await self.call("POST", "/api/v1/auth/logout", json={"refresh_token": resp.json()["refresh_token"]})

    async def refresh(self) -> None:
        resp = await self.call("POST", "/api/v1/auth/refresh", json={"refresh_token": self.tokens["refresh_token"]})
        if resp.status_code == 200:
            self.tokens = resp.json()

    async def profile(self) -> None:
        zone = random.choice(["UTC", "Europe/Moscow", "Asia/Tokyo"])
        await self.call("PATCH", "/api/v1/users/me", json={"timezone": zone}, headers=self.auth)


def test_nothing_changes_while_frozen(freeze_env: dict[str, str], tmp_path: Path) -> None:
    env = {**freeze_env, "LOGIN_ATTEMPTS_PER_MINUTE": "1000", "REMINDER_POLL_SECONDS": "0.2"}
    upload_dir = Path(env["DATA_DIR"]) / "uploads"
    database_url = env["DATABASE_URL"]

    async def scenario(servers: list[ServerProcess]) -> dict[str, Any]:
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()
        https = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in servers]
        clients = [Client(https[i % 2], statuses) for i in range(2 * CLIENTS_PER_INSTANCE)]
        await asyncio.gather(*(c.setup() for c in clients))

        async def hammer(client: Client) -> None:
            while not stop.is_set():
                await client.step()

        workers = [asyncio.create_task(hammer(c)) for c in clients]
        await asyncio.sleep(HAMMER_BEFORE)
        before = dict(statuses)
        proc = await asyncio.create_subprocess_exec(
            TIMETODO,
            "maintenance",
            "on",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err
        frozen_tables, frozen_files = await table_checksums(database_url), upload_listing(upload_dir)
        statuses.clear()
        await asyncio.sleep(HAMMER_FROZEN)
        stop.set()
        await asyncio.gather(*workers)
        after_tables, after_files = await table_checksums(database_url), upload_listing(upload_dir)
        for http in https:
            await http.aclose()
        return {
            "before": before,
            "during": dict(statuses),
            "tables": (frozen_tables, after_tables),
            "files": (frozen_files, after_files),
        }

    with two_instances(env, tmp_path) as servers:
        try:
            result = asyncio.run(scenario(servers))
        finally:
            assert cli(env, "maintenance", "off").returncode == 0
        logs = "".join(s.log() for s in servers)
    assert result["before"].get(201, 0) > 5, result["before"]  # the hammer really wrote before the freeze
    assert result["during"].get(503, 0) > 5, result["during"]
    assert not [s for s in result["during"] if s >= 500 and s != 503], (result["during"], logs)
    frozen_tables, after_tables = result["tables"]
    changed = sorted(name for name in frozen_tables if frozen_tables[name] != after_tables.get(name))
    assert changed == [], f"tables changed while frozen: {changed}"
    assert result["files"][0] == result["files"][1]


def test_killed_worker_leaves_no_empty_idempotency_claim(services: Services, tmp_path: Path) -> None:
    """A request with a key is stuck (its user's row is locked from outside), the server is killed: the key is
    free, and the retry creates the task (before: an empty claim answered 409 for 24 h)."""
    db_url = asyncio.run(create_database(services.postgres_url))
    env = server_env(db_url, own_redis_db(services.redis_url, 8), tmp_path / "data")
    key = uuid.uuid4().hex

    async def locked_request(server: ServerProcess) -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            email = unique_email()
            await c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
            tokens = (await c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})).json()
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            conn = await asyncpg.connect(_plain(db_url))
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM users WHERE email = $1 FOR UPDATE", email)
            pending = asyncio.create_task(
                c.post("/api/v1/tasks", json={"title": "once"}, headers={**auth, "Idempotency-Key": key})
            )
            await asyncio.sleep(1.0)
            server.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(httpx.HTTPError):
                await pending
            await tx.rollback()
            await asyncio.sleep(0.2)
            claims = await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key)
            tasks = await conn.fetchval("SELECT count(*) FROM tasks WHERE title = 'once'")
            await conn.close()
            return int(claims), int(tasks)

    server = ServerProcess(env, tmp_path)
    server.wait_ready()
    try:
        claims, tasks = asyncio.run(locked_request(server))
    finally:
        server.stop()
    assert (claims, tasks) == (0, 0)
