"""Shared state for all instances: Redis when `REDIS_URL` is set, an in-process fallback otherwise.

The fallback is correct for one process only (counters, cached values and pub/sub are not shared);
the service logs that once at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

import redis.asyncio as aioredis

log = logging.getLogger("timetodo.cache")


class Cache(Protocol):
    kind: str

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        """Count one event in the fixed window of `key`; returns (count, seconds until the window resets)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None: ...

    async def set_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def publish(self, channel: str, message: bytes) -> None: ...

    def subscribe(self, channel: str, on_subscribed: Callable[[], None] | None = None) -> AsyncGenerator[bytes, None]:
        """The messages published on `channel` from the moment `on_subscribed` is called (once, when the server has
        confirmed the subscription)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryCache:
    """The single-process fallback. Bounded: at most MAX_KEYS keys; past that, expired keys are swept and then
    the oldest written keys dropped (so rotating e-mails or addresses cannot grow memory without limit)."""

    kind = "memory"
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._values: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._queues: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)

    def _alive(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= time.monotonic():
            del self._values[key]
            return None
        return item

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        now = time.monotonic()
        item = self._alive(key)
        if item is None:
            count, expires = 1, now + window_seconds
        else:
            count, expires = int(item[0]) + 1, item[1] or now + window_seconds
        self._store(key, (str(count).encode(), expires))
        return count, max(0.0, expires - now)

    def _store(self, key: str, item: tuple[bytes, float | None]) -> None:
        self._values[key] = item
        self._values.move_to_end(key)
        if len(self._values) > self.MAX_KEYS:
            now = time.monotonic()
            for stale in [k for k, (_v, exp) in self._values.items() if exp is not None and exp <= now]:
                del self._values[stale]
            while len(self._values) > self.MAX_KEYS * 9 // 10:
                self._values.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        item = self._alive(key)
        return item[0] if item else None

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        self._store(key, (value, time.monotonic() + ttl_seconds if ttl_seconds else None))

    async def set_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        if self._alive(key) is not None:
            return False
        await self.set(key, value, ttl_seconds)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in list(self._queues.get(channel, ())):
            queue.put_nowait(message)

    async def subscribe(
        self, channel: str, on_subscribed: Callable[[], None] | None = None
    ) -> AsyncGenerator[bytes, None]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues[channel].add(queue)
        if on_subscribed is not None:
            on_subscribed()
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues[channel].discard(queue)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._values.clear()


class RedisCache:
    kind = "redis"

    def __init__(self, url: str, pool_size: int) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, max_connections=pool_size, socket_connect_timeout=5, health_check_interval=30
        )

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window_seconds, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl = await pipe.execute()
        return int(count), max(0.0, int(pttl) / 1000)

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(key)
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        if ttl_seconds:
            await self.client.set(key, value, px=int(ttl_seconds * 1000))
        else:
            await self.client.set(key, value)

    async def set_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        return bool(await self.client.set(key, value, px=int(ttl_seconds * 1000), nx=True))

    async def delete(self, key: str) -> None:
        await self.client.delete(key)

    async def publish(self, channel: str, message: bytes) -> None:
        await self.client.publish(channel, message)

    async def subscribe(
        self, channel: str, on_subscribed: Callable[[], None] | None = None
    ) -> AsyncGenerator[bytes, None]:
        pubsub = self.client.pubsub()
        await pubsub.subscribe(channel)
        try:
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "message":
                    yield bytes(message["data"])
                elif kind == "subscribe" and on_subscribed is not None:
                    on_subscribed()  # Redis has the subscription: every later PUBLISH reaches it
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


def create_cache(redis_url: str | None, pool_size: int) -> Cache:
    if redis_url:
        return RedisCache(redis_url, pool_size)
    log.warning(
        "REDIS_URL is not set: cache, rate limits and live events are in-process and valid for a single "
        "process only; set REDIS_URL before running several workers or instances"
    )
    return MemoryCache()
