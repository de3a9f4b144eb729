"""A client that stops reading a download holds no database connection or transaction (issue 10, item 2: no
transaction spans client I/O). Before: the request's session stayed open — `idle in transaction` on PostgreSQL —
until the whole file was sent, so a few stalled downloads could drain the pool."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.server import ServerProcess, server_env
from tests.support import PASSWORD, Services, create_database, unique_email

pytestmark = pytest.mark.slow


async def _idle_in_transaction(db_url: str) -> int:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


def test_stalled_download_holds_no_transaction(services: Services, tmp_path: Path) -> None:
    db_url = asyncio.run(create_database(services.postgres_url))
    env = server_env(db_url, None, tmp_path / "data")
    server = ServerProcess(env, tmp_path)
    server.wait_ready()
    sock: socket.socket | None = None
    try:
        email = unique_email()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
            token = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            task = c.post("/api/v1/tasks", json={"title": "t"}, headers=auth).json()
            up = c.post(
                f"/api/v1/tasks/{task['id']}/attachments",
                files={"file": ("big.bin", os.urandom(16 * 1024 * 1024))},
                headers=auth,
            )
            assert up.status_code == 201, up.text
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = (
            f"GET /api/v1/attachments/{up.json()['id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {auth['Authorization']}\r\n\r\n"
        )
        sock.sendall(request.encode())
        sock.recv(1024)  # the response has started; from now on this client reads nothing
        time.sleep(1.0)
        held = asyncio.run(_idle_in_transaction(db_url))
        with httpx.Client(base_url=server.url, timeout=10) as c:  # and the server still answers others
            assert c.get("/api/v1/tasks", headers=auth).status_code == 200
    finally:
        if sock is not None:
            sock.close()
        server.stop()
    assert held == 0
