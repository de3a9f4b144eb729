"""Helpers shared by the test suite: real PostgreSQL/Redis from scripts/, fresh databases, API clients."""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PASSWORD = "correct horse battery"
_ip_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_script(*args: str) -> str:
    result = subprocess.run(["bash", *args], check=True, capture_output=True, text=True, timeout=300, cwd=ROOT)
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Services:
    """PostgreSQL and Redis started by the project's scripts for this test session (or given by env)."""

    postgres_url: str
    redis_url: str
    base_dir: Path | None = None
    started: list[tuple[str, Path]] = field(default_factory=list)

    @classmethod
    def start(cls) -> Services:
        pg_env = os.environ.get("TIMETODO_TEST_POSTGRES_URL")
        redis_env = os.environ.get("TIMETODO_TEST_REDIS_URL")
        if pg_env and redis_env:
            return cls(pg_env, redis_env)
        base = Path(tempfile.mkdtemp(prefix="ttd-services-"))
        base.chmod(0o755)
        pg_dir, redis_dir = base / "pg", base / "redis"
        services = cls("", "", base)
        services.postgres_url = run_script("scripts/postgres.sh", "start", str(pg_dir), str(free_port()))
        services.started.append(("scripts/postgres.sh", pg_dir))
        services.redis_url = run_script(
            "scripts/redis.sh", "start", str(redis_dir), str(free_port()), secrets.token_hex(8)
        )
        services.started.append(("scripts/redis.sh", redis_dir))
        return services

    def stop(self) -> None:
        for script, directory in reversed(self.started):
            subprocess.run(["bash", script, "stop", str(directory)], cwd=ROOT, capture_output=True, timeout=60)


async def create_database(server_url: str) -> str:
    """A fresh, empty database on the test server; returns its asyncpg URL."""
    import asyncpg

    name = f"ttd_{secrets.token_hex(6)}"
    plain = server_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _db = plain.rpartition("/")
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"


def next_client_ip() -> str:
    n = next(_ip_counter)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(5)}@example.com"


async def register(client: httpx.AsyncClient, email: str | None = None, **extra: Any) -> dict[str, Any]:
    email = email or unique_email()
    resp = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, **extra})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", data={"username": email, "password": password})


async def new_user(client: httpx.AsyncClient, **extra: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Register a user and log in; returns (auth headers, token pair)."""
    user = await register(client, **extra)
    resp = await login(client, user["email"])
    assert resp.status_code == 200, resp.text
    tokens: dict[str, Any] = resp.json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}, tokens | {"user": user}


# migration secrets pointing at ports nobody listens on: for tests that must not reach any host
UNREACHABLE_MIGRATION_SECRETS = {
    "SOURCE_ADMIN_PASSWORD": "pw",
    "SOURCE_DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/app",
    "SOURCE_REDIS_URL": "redis://127.0.0.1:1/0",
    "TARGET_DATABASE_URL": "postgresql://timetodo:pw@127.0.0.1:1/timetodo",
    "TARGET_REDIS_URL": "redis://127.0.0.1:1/0",
    "TELEGRAM_BOT_TOKEN": "123:abc",
    "TELEGRAM_WEBHOOK_SECRET": "hook-secret",
}
