"""One slow client must not stall everyone (issue 10, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi import FastAPI

from tests.conftest import asgi_client
from tests.support import new_user
from timetodo.core.events import EventHub
from timetodo.core.maintenance import set_maintenance

# Generous: the point is "not blocked behind the slow client" (which would take 30 s), not a speed figure.
NOT_BLOCKED = 10.0


async def test_paused_upload_holds_no_lock(app: FastAPI) -> None:
    """An upload that sends its first bytes and pauses: another user's write and maintenance-on both go through
    (before: SQLite's write lock / PostgreSQL's share lock on the flag row was held while the client was sending)."""
    resume = asyncio.Event()
    boundary = "slowboundary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        yield b"x" * 1000
        await resume.wait()
        yield f"\r\n--{boundary}--\r\n".encode()

    async with asgi_client(app) as slow, asgi_client(app) as other:
        auth, _ = await new_user(slow)
        other_auth, _ = await new_user(other)
        task = (await slow.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
        upload = asyncio.create_task(
            slow.post(
                f"/api/v1/tasks/{task['id']}/attachments",
                content=body(),
                headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        )
        try:
            await asyncio.sleep(0.3)
            assert not upload.done()
            created = await asyncio.wait_for(
                other.post("/api/v1/projects", json={"name": "not blocked"}, headers=other_auth), NOT_BLOCKED
            )
            assert created.status_code == 201, created.text

            async def switch(enabled: bool) -> None:
                async with app.state.sessionmaker() as session:
                    await set_maintenance(session, enabled)

            await asyncio.wait_for(switch(True), NOT_BLOCKED)
            try:
                resume.set()
                refused = await asyncio.wait_for(upload, NOT_BLOCKED)
                assert refused.status_code == 503 and refused.json()["error"] == "maintenance"
            finally:
                await switch(False)
        finally:
            resume.set()
            with contextlib.suppress(Exception):
                await upload
    async with asgi_client(app) as c:
        listed = await c.get(f"/api/v1/tasks/{task['id']}/attachments", headers=auth)
        assert listed.json() == []


class StuckSocket:
    """A client that stopped reading: a send never completes."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_text(self, data: str) -> None:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


class ListeningSocket:
    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        await self.received.put(orjson.loads(data))


async def test_stuck_reader_does_not_delay_other_users(app: FastAPI) -> None:
    """One user's socket never reads; another user's event still arrives at once, and publishing never waits
    (before: sends ran in sequence with a 5 s timeout each, in the publisher or the one subscription loop)."""
    hub = EventHub(app.state.cache)
    await hub.start()
    try:
        stuck, listening = StuckSocket(), ListeningSocket()
        await hub.add(1_000_001, stuck)
        await hub.add(1_000_002, listening)
        await asyncio.sleep(0.2)  # the subscription is up
        for n in range(3):
            await asyncio.wait_for(hub.publish(1_000_001, "task.created", {"n": n}), NOT_BLOCKED / 10)
        await hub.publish(1_000_002, "task.created", {"n": "other"})
        event = await asyncio.wait_for(listening.received.get(), 2.0)
        assert event["data"] == {"n": "other"}
    finally:
        await hub.stop()


async def test_reader_far_behind_is_closed(app: FastAPI) -> None:
    """A socket that falls more than the outbox behind is dropped with 1013 and no longer counted."""
    from timetodo.core import events

    hub = EventHub(app.state.cache)
    stuck = StuckSocket()
    await hub.add(1_000_003, stuck)
    try:
        for n in range(events.OUTBOX_SIZE + 2):
            await hub._deliver(orjson.dumps({"user_id": 1_000_003, "type": "x", "data": n}))
        await asyncio.sleep(0.05)
        assert stuck.closed_with == events.CLOSE_TRY_AGAIN_LATER
        assert 1_000_003 not in hub.sockets
    finally:
        await hub.stop()


async def test_upload_still_works(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    resp = await client.post(
        f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("a.txt", b"hello")}, headers=auth
    )
    assert resp.status_code == 201, resp.text
