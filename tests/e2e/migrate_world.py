"""A source deployment and a target "host" on one machine, for the migration tests and `bench/migrate.py`.

Source: PostgreSQL A (a fresh database on the session's server), Redis A (its own database index), an upload
directory and `timetodo serve` A. Target: PostgreSQL B and Redis B (separate servers started by scripts/), reached
over real SSH on 127.0.0.1 (scripts/sshd.sh); the toolkit starts the app there with its process runtime. A fake
Telegram Bot API (a real HTTP server on 127.0.0.1) holds the webhook and pending updates. A DNS hook writes the
"current" host into a file that clients follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from tests.e2e.server import TIMETODO, ServerProcess, cli, server_env
from tests.fakes.telegram import FakeTelegram
from tests.support import PASSWORD, Services, create_database, free_port, run_script

SECRET = "migration-e2e-secret-key-long-enough-0123456789"
BOT_TOKEN = "123456:migration-e2e-bot-token"
ADMIN = "admin@example.com"
WEBHOOK_SECRET = "hook_secret_1"
PROBE_CHAT = 4_000_001  # the operator's chat with the bot: validate's /ping comes from it (bot=True)


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class World:
    base: Path
    config: Path
    env: dict[str, str]
    source: ServerProcess
    source_db: str
    source_redis: str
    source_uploads: Path
    target_db: str
    target_redis: str
    target_url: str
    target_uploads: Path
    current: Path
    telegram: FakeTelegram
    writer_token: str
    cleanup: list[tuple[str, Path]] = field(default_factory=list)

    def migrate(
        self, *args: str, config: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """`timetodo migrate ARGS --config CONFIG` (this world's by default) with the world's variables (+ `env`)."""
        return subprocess.run(
            [TIMETODO, "migrate", *args, "--config", str(config or self.config)],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
        )

    def state(self) -> dict[str, Any]:
        path = self.base / "work" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}


def seed_api(source: ServerProcess, source_redis: str, users: int = 3, tasks: int = 20) -> str:
    """Users, projects, tasks, attachments through the API; Redis keys with and without TTL. Returns the last
    user's access token (the writer's)."""
    with httpx.Client(base_url=source.url, timeout=30) as c:
        token = ""
        for i in range(users):
            email = f"user{i}@example.com"
            c.post(
                "/api/v1/auth/register",
                json={"email": email, "password": PASSWORD},
                headers={"X-Forwarded-For": f"10.77.0.{i}"},
            )
            token = c.post(
                "/api/v1/auth/login",
                data={"username": email, "password": PASSWORD},
                headers={"X-Forwarded-For": f"10.77.0.{i}"},
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            project = c.post("/api/v1/projects", json={"name": f"p{i}"}, headers=auth).json()
            for j in range(tasks):
                task = c.post(
                    "/api/v1/tasks",
                    json={"title": f"seed {i}.{j}", "project_id": project["id"], "labels": ["x"]},
                    headers=auth,
                ).json()
                if j % 5 == 0:
                    files = {"file": (f"f{i}{j}.txt", os.urandom(2000 + j))}
                    resp = c.post(f"/api/v1/tasks/{task['id']}/attachments", files=files, headers=auth)
                    assert resp.status_code == 201, resp.text
    r = redis.Redis.from_url(source_redis)
    for k in range(200):
        r.set(f"seed:plain:{k}", os.urandom(16))
        r.set(f"seed:ttl:{k}", "v", ex=3600)
    r.hset("seed:hash", mapping={"a": "1", "b": "2"})
    r.close()
    return token


def bot_env(telegram: FakeTelegram) -> dict[str, str]:
    """The bot's settings on both hosts (the same bot; the fake Bot API on loopback)."""
    return {
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "TELEGRAM_API_BASE": telegram.base_url,
        "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TELEGRAM_CHAT_RATE": "50",
    }


def make_world(
    base: Path,
    services: Services,
    *,
    budget_minutes: float = 5,
    seed: bool = True,
    bot: bool = False,
    target_env: dict[str, str] | None = None,
) -> World:
    """`bot=True`: both hosts run the bot, the fake delivers updates to the webhook by itself (retrying on non-2xx,
    like Telegram), the webhook has the secret, validate probes the bot from `PROBE_CHAT`; no junk pending updates.
    `target_env`: more settings in the target app's env file (the suite shortens AUTH_STATE_CACHE_SECONDS there,
    which the cutover waits for before it opens the target; `bench/migrate.py` keeps the app's defaults)."""
    base.chmod(0o755)
    cleanup: list[tuple[str, Path]] = []
    telegram = FakeTelegram(BOT_TOKEN, auto_deliver=bot, delivery_interval=0.1).start()
    source_db = asyncio.run(create_database(services.postgres_url))
    source_redis = services.redis_url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(source_redis).flushdb()
    source_uploads = base / "source-uploads"
    env_a = (
        server_env(source_db, source_redis, base / "source-data")
        | {
            "UPLOAD_DIR": str(source_uploads),
            "SECRET_KEY": SECRET,
            "LOGIN_ATTEMPTS_PER_MINUTE": "60",  # every toolkit run logs in; the resume test starts seven
            "LOG_LEVEL": "WARNING",
            # argon2 at the production cost, like the target app (its settings come from its .env, not from this
            # environment): validate compares the two hosts under the same load, logins included
            "TIMETODO_TEST_FAST_PASSWORD_HASH": "0",
        }
        | (bot_env(telegram) if bot else {})
    )
    source = ServerProcess(env_a, base)  # starting (importing the app takes seconds) while the target's servers start
    pg_b = run_script("scripts/postgres.sh", "start", str(base / "pg-b"), str(free_port()))
    cleanup.append(("scripts/postgres.sh", base / "pg-b"))
    redis_b = run_script("scripts/redis.sh", "start", str(base / "redis-b"), str(free_port()), "target-redis-pw")
    cleanup.append(("scripts/redis.sh", base / "redis-b"))
    ssh_line = run_script("scripts/sshd.sh", "start", str(base / "sshd"), str(free_port()))
    cleanup.append(("scripts/sshd.sh", base / "sshd"))
    source.wait_ready()
    ssh = dict(part.split("=", 1) for part in ssh_line.split())
    target_port = free_port()
    target_url = f"http://127.0.0.1:{target_port}"
    target_uploads = base / "target-uploads"
    (base / "target.env").write_text(
        "\n".join(
            [
                f"DATABASE_URL={pg_b}",
                f"REDIS_URL={redis_b}",
                f"SECRET_KEY={SECRET}",
                "ENVIRONMENT=test",
                f"DATA_DIR={base / 'target-data'}",
                f"UPLOAD_DIR={target_uploads}",
                "LOG_LEVEL=WARNING",
                "MAINTENANCE_CACHE_SECONDS=1",
                *([f"{k}={v}" for k, v in bot_env(telegram).items()] if bot else []),
                *[f"{k}={v}" for k, v in (target_env or {}).items()],
            ]
        )
        + "\n"
    )
    current = base / "current-host"
    current.write_text(source.url)
    hook = base / "dns-hook.sh"
    hook.write_text(f'#!/bin/sh\n# RECORD OLD NEW\nprintf "%s" "$3" > {current}\necho "pointed $1 at $3"\n')
    hook.chmod(0o755)
    config = base / "migration.toml"
    config.write_text(f"""
app_name = "timetodo"
downtime_budget_minutes = {budget_minutes}
work_dir = "work"
parallel_jobs = 2

[source]
api_url = "{source.url}"
admin_email = "{ADMIN}"
admin_password_env = "MIG_ADMIN_PASSWORD"
database_url_env = "MIG_SOURCE_DB"
redis_url_env = "MIG_SOURCE_REDIS"

[source.uploads]
path = "{source_uploads}"
ssh = {{ host = "127.0.0.1", port = {ssh["port"]}, user = "{ssh["user"]}", key_file = "{ssh["key"]}", known_hosts = "{ssh["known_hosts"]}" }}

[target]
host = "127.0.0.1"
port = {ssh["port"]}
user = "{ssh["user"]}"
key_file = "{ssh["key"]}"
known_hosts = "{ssh["known_hosts"]}"
public_url = "{target_url}"
app_dir = "{base / "target-app"}"
runtime = "process"
uploads_dir = "{target_uploads}"
timetodo_bin = "{TIMETODO}"
app_port = {target_port}
database_url_env = "MIG_TARGET_DB"
redis_url_env = "MIG_TARGET_REDIS"
env_file = "{base / "target.env"}"

[validate]
load_seconds = 2      # the load mix, short in the suite (the default is 10 s)
load_connections = 4

[telegram]
bot_token_env = "MIG_TG_TOKEN"
api_base = "{telegram.base_url}"
webhook_secret_env = "MIG_TG_SECRET"
{f"probe_chat_id = {PROBE_CHAT}" if bot else ""}

[dns]
record = "api.example.test"
hook = "{hook}"
""")
    env = {
        "MIG_ADMIN_PASSWORD": PASSWORD,
        "MIG_SOURCE_DB": plain(source_db),
        "MIG_SOURCE_REDIS": source_redis,
        "MIG_TARGET_DB": pg_b,
        "MIG_TARGET_REDIS": redis_b,
        "MIG_TG_TOKEN": BOT_TOKEN,
        "MIG_TG_SECRET": WEBHOOK_SECRET,
    }
    created = cli(env_a | {"TIMETODO_PASSWORD": PASSWORD}, "user", "create", ADMIN, "--admin")
    assert created.returncode == 0, created.stderr
    token = seed_api(source, source_redis) if seed else ""
    with httpx.Client(base_url=telegram.base_url) as c:
        hook = {"url": source.url + "/api/v1/telegram/webhook"} | ({"secret_token": WEBHOOK_SECRET} if bot else {})
        resp = c.post(f"/bot{BOT_TOKEN}/setWebhook", json=hook)
        assert resp.json()["ok"], resp.text
    for n in range(0 if bot else 3):
        telegram.enqueue_update({"update_id": 1000 + n, "message": {"text": f"pending {n}"}})
    world = World(
        base,
        config,
        env,
        source,
        plain(source_db),
        source_redis,
        source_uploads,
        pg_b,
        redis_b,
        target_url,
        target_uploads,
        current,
        telegram,
        token,
        cleanup,
    )
    return world


def stop_world(world: World) -> None:
    base, source, telegram, cleanup = world.base, world.source, world.telegram, world.cleanup
    # stop the target app the toolkit started, then everything else
    pid_file = base / "target-app" / "timetodo.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    source.stop()
    telegram.stop()
    for script, directory in reversed(cleanup):
        subprocess.run(["bash", script, "stop", str(directory)], capture_output=True, timeout=60)


class Writer:
    """~50 writes/s from two loops, each write a unique title + Idempotency-Key, retried until acknowledged,
    always to the host named in the `current` file (what DNS would answer)."""

    def __init__(self, current: Path, token: str, prefix: str) -> None:
        self.current, self.token, self.prefix = current, token, prefix
        self.acked: dict[str, str] = {}
        self.failures = 0
        self.failure_times: list[float] = []  # wall clock, comparable with the state file's timestamps
        self.last_ack: list[float] = []
        self.ack_hosts: list[str] = []  # the host of every acknowledged write, in order (appends are atomic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _loop(self, lane: int) -> None:
        n = 0
        async with httpx.AsyncClient(timeout=5) as c:
            while not self._stop.is_set():
                uid = f"{self.prefix}-{lane}-{n}"
                n += 1
                while True:
                    base = self.current.read_text().strip()
                    try:
                        resp = await c.post(
                            f"{base}/api/v1/tasks",
                            json={"title": uid},
                            headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": uid},
                        )
                        if resp.status_code == 201:
                            self.acked[uid] = base
                            self.last_ack.append(time.monotonic())
                            self.ack_hosts.append(base)
                            break
                    except httpx.HTTPError:
                        pass
                    self.failures += 1
                    self.failure_times.append(time.time())
                    if self._stop.is_set():
                        return  # an unacknowledged write at the very end: not counted
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.02)

    async def _main(self) -> None:
        await asyncio.gather(self._loop(0), self._loop(1))

    def mark(self) -> int:
        """A position in the acknowledged writes, for `wait_for_acks`."""
        return len(self.ack_hosts)

    def wait_for_acks(self, host: str, count: int, since: int = 0, timeout: float = 120) -> None:
        """Until `count` writes acknowledged through `host` after position `since` (instead of a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while sum(1 for h in self.ack_hosts[since:] if h == host) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.prefix}: fewer than {count} writes acknowledged by {host} in {timeout}s")
            if not self._thread.is_alive():
                raise AssertionError(f"{self.prefix}: the writer stopped")
            time.sleep(0.02)

    def max_gap(self) -> float:
        stamps = sorted(self.last_ack)
        return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


async def titles(db_url: str, prefix: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT title, count(*) AS n FROM tasks WHERE title LIKE $1 GROUP BY title", f"{prefix}-%"
        )
        return {r["title"]: int(r["n"]) for r in rows}
    finally:
        await conn.close()
