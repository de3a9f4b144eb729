"""Live events: publish on any instance, deliver to the user's sockets on every instance.

With Redis, every event goes through one pub/sub channel and each instance's hub forwards it to its own sockets
of that user; without Redis the hub delivers within the process.
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


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...


class EventHub:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.sockets: dict[int, set[Socket]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None

    # sockets ----------------------------------------------------------------------------------------------------
    def add(self, user_id: int, socket: Socket) -> None:
        self.sockets[user_id].add(socket)
        WS_CONNECTIONS.inc()

    def remove(self, user_id: int, socket: Socket) -> None:
        group = self.sockets.get(user_id)
        if group and socket in group:
            group.discard(socket)
            WS_CONNECTIONS.dec()
            if not group:
                del self.sockets[user_id]

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
        results = await asyncio.gather(
            *(asyncio.wait_for(sock.send_text(text), SEND_TIMEOUT) for sock in targets), return_exceptions=True
        )
        for sock, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                self.remove(user_id, sock)

    async def start(self) -> None:
        if self.cache.kind == "redis" and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self.cache.subscribe(CHANNEL):
                    await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event subscription failed; resubscribing in 1 s")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
