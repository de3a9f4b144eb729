"""Live events over real WebSockets against real `timetodo serve` processes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.server import ServerProcess
from tests.support import PASSWORD, next_client_ip, unique_email

pytestmark = pytest.mark.slow


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1/ws"


def make_user(server: ServerProcess) -> dict[str, str]:
    email = unique_email()
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-For": next_client_ip()}) as c:
        assert c.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        tokens = c.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {tokens['access_token']}", "token": tokens["access_token"]}


async def authed(server: ServerProcess, token: str) -> ClientConnection:
    ws = await connect(ws_url(server))
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ready"}
    return ws


async def next_event(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    """The next message that is not a ping, within `timeout` seconds overall (pings do not extend it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time())))
        if message["type"] == "ping":
            await ws.send('{"type":"pong"}')
            continue
        return dict(message)


async def close_code(ws: ClientConnection, timeout: float = 5) -> tuple[int | None, str | None]:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, None)


def test_events_reach_the_users_sockets_on_every_instance(two_servers: list[ServerProcess]) -> None:
    alice, bob = make_user(two_servers[0]), make_user(two_servers[1])

    async def scenario() -> None:
        a1 = await authed(two_servers[0], alice["token"])
        a2 = await authed(two_servers[1], alice["token"])
        b2 = await authed(two_servers[1], bob["token"])
        async with httpx.AsyncClient(base_url=two_servers[0].url) as c:
            headers = {"Authorization": alice["Authorization"]}
            task = (await c.post("/api/v1/tasks", json={"title": "live"}, headers=headers)).json()
            for ws in (a1, a2):
                event = await next_event(ws)
                assert event["type"] == "task.created" and event["data"]["id"] == task["id"]
            await c.post(f"/api/v1/tasks/{task['id']}/complete", headers=headers)
            await c.post("/api/v1/timer/start", json={"task_id": task["id"]}, headers=headers)
            await c.post("/api/v1/timer/stop", headers=headers)
            await c.delete(f"/api/v1/tasks/{task['id']}", headers=headers)
            for ws in (a1, a2):
                kinds = [(await next_event(ws))["type"] for _ in range(4)]
                assert kinds == ["task.completed", "time_entry.started", "time_entry.stopped", "task.deleted"]
            # bob saw none of it: his first event is his own task
            bob_task = (
                await c.post("/api/v1/tasks", json={"title": "bob"}, headers={"Authorization": bob["Authorization"]})
            ).json()
            event = await next_event(b2)
            assert event["type"] == "task.created" and event["data"]["id"] == bob_task["id"]
        metrics = httpx.get(f"{two_servers[1].url}/metrics").text
        assert "timetodo_websocket_connections 2.0" in metrics
        for ws in (a1, a2, b2):
            await ws.close()

    asyncio.run(scenario())


def test_socket_protocol_errors(two_servers: list[ServerProcess]) -> None:
    server = two_servers[0]
    alice = make_user(server)

    async def scenario() -> None:
        silent = await connect(ws_url(server))
        assert (await close_code(silent))[0] == 4408  # never authenticated
        garbage = await connect(ws_url(server))
        await garbage.send("not json at all")
        assert (await close_code(garbage))[0] == 1003
        wrong = await connect(ws_url(server))
        await wrong.send(json.dumps({"type": "subscribe"}))
        assert (await close_code(wrong))[0] == 1008
        bad_token = await connect(ws_url(server))
        await bad_token.send(json.dumps({"type": "auth", "token": alice["token"][:-4] + "AAAA"}))
        code, reason = await close_code(bad_token)
        assert code == 4401 and reason and "token" in reason
        # a client that stops answering pings is dropped (ping every 1 s, dropped after 2 silent intervals)
        mute = await authed(server, alice["token"])
        messages = []
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(mute.recv(), 10)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1008
        assert {"type": "ping"} in messages

    asyncio.run(scenario())


def test_events_in_process_without_redis(tmp_path: Path) -> None:
    from tests.e2e.server import server_env

    env = server_env(f"sqlite:///{tmp_path / 'db.sqlite'}", None, tmp_path)
    server = ServerProcess(env, tmp_path)
    try:
        server.wait_ready()
        alice = make_user(server)

        async def scenario() -> None:
            ws = await authed(server, alice["token"])
            async with httpx.AsyncClient(base_url=server.url) as c:
                await c.post("/api/v1/tasks", json={"title": "x"}, headers={"Authorization": alice["Authorization"]})
            assert (await next_event(ws))["type"] == "task.created"
            await ws.close()

        asyncio.run(scenario())
    finally:
        assert server.stop() == 0, server.log()


def test_two_instances_fire_each_reminder_exactly_once(two_servers: list[ServerProcess]) -> None:
    from datetime import UTC, datetime, timedelta

    alice = make_user(two_servers[0])
    headers = {"Authorization": alice["Authorization"]}

    async def scenario() -> None:
        sockets = [await authed(server, alice["token"]) for server in two_servers]
        async with httpx.AsyncClient(base_url=two_servers[1].url, headers=headers) as c:
            task = (await c.post("/api/v1/tasks", json={"title": "remind me", "due": {"date": "2099-01-01"}})).json()
            soon = datetime.now(UTC) + timedelta(seconds=2)
            ids = set()
            for i in range(12):
                resp = await c.post(
                    f"/api/v1/tasks/{task['id']}/reminders",
                    json={"remind_at": (soon + timedelta(milliseconds=50 * i)).isoformat()},
                )
                ids.add(resp.json()["id"])
        loop = asyncio.get_running_loop()

        async def collect(ws: ClientConnection) -> list[int]:
            """reminder.fired ids on one socket; once all arrived, listen 1.5 s more to catch a duplicate."""
            seen: list[int] = []
            until = loop.time() + 10
            while loop.time() < until:
                try:
                    event = await next_event(ws, timeout=until - loop.time())
                except TimeoutError:
                    break
                if event["type"] == "reminder.fired":
                    seen.append(event["data"]["id"])
                    if len(seen) == len(ids):
                        until = loop.time() + 1.5
            return seen

        # sockets are read concurrently so that each answers its pings
        for seen in await asyncio.gather(*(collect(ws) for ws in sockets)):
            # every reminder arrives once on every socket: fired once in total, fanned out through Redis
            assert sorted(seen) == sorted(ids), seen
        async with httpx.AsyncClient(base_url=two_servers[0].url, headers=headers) as c:
            states = {r["state"] for r in (await c.get(f"/api/v1/tasks/{task['id']}/reminders")).json()}
        assert states == {"sent"}
        for ws in sockets:
            await ws.close()

    asyncio.run(scenario())


def test_sigterm_closes_sockets_with_going_away(tmp_path: Path) -> None:
    """A restarting instance tells its WebSocket clients 1001 so they reconnect elsewhere, then exits cleanly."""
    from tests.e2e.server import server_env

    env = server_env(f"sqlite:///{tmp_path / 'db.sqlite'}", None, tmp_path) | {"WS_PING_SECONDS": "30"}
    server = ServerProcess(env, tmp_path)
    try:
        server.wait_ready()
        alice = make_user(server)

        async def scenario() -> tuple[int | None, str | None]:
            ws = await authed(server, alice["token"])
            server.proc.send_signal(signal.SIGTERM)
            return await close_code(ws)

        code, reason = asyncio.run(scenario())
        assert code == 1001, (code, reason)
    finally:
        assert server.stop() == 0, server.log()
