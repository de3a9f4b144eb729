"""Tokens follow the account on a real server: a deactivation done in the database is seen within
AUTH_STATE_CACHE_SECONDS, and open WebSockets are closed (4401) when the account is disabled or the token expires."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.server import ServerProcess, server_env
from tests.support import PASSWORD, unique_email

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("sessions")
    env = server_env(f"sqlite:///{tmp / 'data' / 's.db'}", None, tmp / "data")
    env["AUTH_STATE_CACHE_SECONDS"] = "0.5"
    proc = ServerProcess(env, tmp)
    proc.wait_ready()
    yield proc, env
    assert proc.stop() == 0


def user(server: ServerProcess) -> tuple[int, str]:
    email = unique_email()
    with httpx.Client(base_url=server.url) as c:
        uid = c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).json()["id"]
        token = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()["access_token"]
    return int(uid), token


async def closed_with(url: str, token: str, action: object) -> int | None:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
        if callable(action):
            action()
        deadline = time.monotonic() + 10  # a few ping intervals (WS_PING_SECONDS=1)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    message = json.loads(await asyncio.wait_for(ws.recv(), 1))
                    if message["type"] == "ping":
                        await ws.send('{"type":"pong"}')
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None  # still open


def test_deactivation_in_the_database_is_seen(server: tuple[ServerProcess, dict[str, str]]) -> None:
    proc, env = server
    uid, token = user(proc)
    auth = {"Authorization": f"Bearer {token}"}
    db = env["DATABASE_URL"].split(":///", 1)[1]
    ws_url = proc.url.replace("http://", "ws://") + "/api/v1/ws"

    def deactivate() -> None:
        with sqlite3.connect(db) as con:
            con.execute("UPDATE users SET is_active = 0 WHERE id = ?", (uid,))

    assert httpx.post(f"{proc.url}/api/v1/projects", json={"name": "p"}, headers=auth).status_code == 201
    code = asyncio.run(closed_with(ws_url, token, deactivate))
    assert code == 4401
    resp = httpx.post(f"{proc.url}/api/v1/projects", json={"name": "p"}, headers=auth)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_token"


def test_socket_closed_when_its_token_expires(server: tuple[ServerProcess, dict[str, str]]) -> None:
    proc, env = server
    uid, _ = user(proc)
    now = int(time.time())
    short = jwt.encode(
        {"sub": str(uid), "type": "access", "ver": 0, "iat": now, "exp": now + 2}, env["SECRET_KEY"], "HS256"
    )
    ws_url = proc.url.replace("http://", "ws://") + "/api/v1/ws"
    assert asyncio.run(closed_with(ws_url, short, None)) == 4401


def test_binary_first_frame_is_closed_with_1003(server: tuple[ServerProcess, dict[str, str]]) -> None:
    """README promises 1003 for anything that is not JSON text (before: a binary frame was dropped, no code)."""
    proc, _env = server
    ws_url = proc.url.replace("http://", "ws://") + "/api/v1/ws"

    async def scenario() -> int | None:
        async with connect(ws_url) as ws:
            await ws.send(b"\x00\x01binary")
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    assert asyncio.run(scenario()) == 1003
