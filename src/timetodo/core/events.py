"""Live events: publish on any instance, deliver to the user's sockets on every instance.

With Redis, every event goes through one pub/sub channel and each instance's hub forwards it to its own sockets
of that user; without Redis the hub delivers within the process.

A process subscribes to the channel only while it has sockets: `await add(...)` returns once Redis has confirmed
the subscription, so every event published after it (on any instance) reaches the new socket; a process without
sockets receives (and decodes) nobody's events — it unsubscribes at the first event that finds it without sockets.

Delivery never waits for a client: every socket has its own bounded outbox drained by its own sender task, so a
reader that stops reading delays nobody else. A socket whose outbox is full (OUTBOX_SIZE events behind) or whose
send takes longer than SEND_TIMEOUT is closed (1013, "try again later"); the client reconnects and catches up
with `GET /sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any, Protocol

import orjson

from timetodo.core.cache import Cache
from timetodo.core.metrics import WS_CONNECTIONS

log = logging.getLogger("timetodo.realtime")
CHANNEL = "timetodo:events"
SEND_TIMEOUT = 5.0
OUTBOX_SIZE = 256
CLOSE_TRY_AGAIN_LATER = 1013
SUBSCRIBE_TIMEOUT = 5.0  # `add` waits at most this for Redis to confirm the subscription (then serves anyway)


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...


class _Outbox:
    """One socket's queue of events and the task that sends them, one at a time."""

    def __init__(self, hub: EventHub, user_id: int, socket: Socket) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=OUTBOX_SIZE)
        self.task = asyncio.create_task(self._run(hub, user_id, socket))

    async def _run(self, hub: EventHub, user_id: int, socket: Socket) -> None:
        while True:
            text = await self.queue.get()
            try:
                await asyncio.wait_for(socket.send_text(text), SEND_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception:
                hub.drop(user_id, socket, "too slow: events were not read in time")
                return


_background: set[asyncio.Task[None]] = set()


async def _close_quietly(close: Any, reason: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(code=CLOSE_TRY_AGAIN_LATER, reason=reason), SEND_TIMEOUT)


class EventHub:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.sockets: dict[int, set[Socket]] = defaultdict(set)
        self._outboxes: dict[Socket, _Outbox] = {}
        self._listener: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()  # this process has sockets: the listener subscribes
        self._subscribed = asyncio.Event()  # Redis has confirmed the listener's subscription

    # sockets ----------------------------------------------------------------------------------------------------
    async def add(self, user_id: int, socket: Socket) -> None:
        """Register a socket; returns once every event published from now on reaches it (see the module)."""
        self.sockets[user_id].add(socket)
        self._outboxes[socket] = _Outbox(self, user_id, socket)
        WS_CONNECTIONS.inc()
        if self._listener is not None:
            self._wanted.set()
            try:
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                log.warning("event subscription not confirmed in time; the socket is served anyway")

    def remove(self, user_id: int, socket: Socket) -> None:
        group = self.sockets.get(user_id)
        if group and socket in group:
            group.discard(socket)
            WS_CONNECTIONS.dec()
            if not group:
                del self.sockets[user_id]
        outbox = self._outboxes.pop(socket, None)
        if outbox is not None and outbox.task is not asyncio.current_task():
            outbox.task.cancel()

    def drop(self, user_id: int, socket: Socket, reason: str) -> None:
        """Forget a socket that cannot keep up and close it (in the background)."""
        self.remove(user_id, socket)
        close = getattr(socket, "close", None)
        if close is not None:
            task = asyncio.get_running_loop().create_task(_close_quietly(close, reason))
            _background.add(task)
            task.add_done_callback(_background.discard)

    @property
    def count(self) -> int:
        return sum(len(group) for group in self.sockets.values())

    # events -----------------------------------------------------------------------------------------------------
    async def publish(self, user_id: int, event_type: str, data: Any) -> None:
        """Send an event to every socket of `user_id`, on every instance. Never raises: events are best effort."""
        message = orjson.dumps({"user_id": user_id, "type": event_type, "data": data, "ts": time.time()})
        try:
            if self.cache.kind == "redis":
                await self.cache.publish(CHANNEL, message)
            else:
                await self._deliver(message)
        except Exception:
            log.exception("could not publish event", extra={"event": event_type})

    async def _deliver(self, message: bytes) -> None:
        event = orjson.loads(message)
        user_id = event.pop("user_id")
        targets = list(self.sockets.get(user_id, ()))
        if not targets:
            return
        text = orjson.dumps(event).decode()
        for sock in targets:
            outbox = self._outboxes.get(sock)
            if outbox is None:
                continue
            try:
                outbox.queue.put_nowait(text)
            except asyncio.QueueFull:
                self.drop(user_id, sock, "too slow: too many unread events")

    async def start(self) -> None:
        if self.cache.kind == "redis" and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            if not self.sockets:
                self._wanted.clear()
            await self._wanted.wait()
            try:
                async with contextlib.aclosing(self.cache.subscribe(CHANNEL, self._subscribed.set)) as messages:
                    async for message in messages:
                        if not self.sockets:
                            # nobody here to deliver to: unsubscribe until a socket arrives (a socket added from
                            # now on waits for the next subscription's confirmation)
                            self._subscribed.clear()
                            break
                        await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                log.exception("event subscription failed; resubscribing in 1 s")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        for outbox in list(self._outboxes.values()):
            outbox.task.cancel()
        self._outboxes.clear()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
