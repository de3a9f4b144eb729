"""A process subscribes to the events channel only while it has WebSocket clients (timetodo.core.events): a worker
without sockets receives and decodes nobody's events, and a socket registered with `add` gets every event
published after `add` returned."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from tests.support import Services
from timetodo.core.cache import RedisCache
from timetodo.core.events import CHANNEL, EventHub


class Socket:
    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        await self.received.put(orjson.loads(data))


async def _subscribers(client: aioredis.Redis) -> int:
    [(_, count)] = await client.pubsub_numsub(CHANNEL)
    return int(count)


async def test_subscribed_only_while_sockets_are_here(services: Services) -> None:
    listener_cache, publisher_cache = RedisCache(services.redis_url, 5), RedisCache(services.redis_url, 5)
    hub, publisher = EventHub(listener_cache), EventHub(publisher_cache)
    redis = aioredis.Redis.from_url(services.redis_url)
    await hub.start()
    try:
        await asyncio.sleep(0.2)
        assert await _subscribers(redis) == 0  # started, no socket: not subscribed (before: always subscribed)

        socket = Socket()
        await hub.add(2_000_001, socket)
        assert await _subscribers(redis) == 1  # subscribed by the time `add` returned
        await publisher.publish(2_000_001, "task.created", {"n": 1})  # from "another instance", at once
        event = await asyncio.wait_for(socket.received.get(), 2.0)
        assert event["type"] == "task.created" and event["data"] == {"n": 1}

        hub.remove(2_000_001, socket)
        await publisher.publish(2_000_001, "task.created", {"n": 2})  # finds no socket: the hub unsubscribes
        for _ in range(100):
            if await _subscribers(redis) == 0:
                break
            await asyncio.sleep(0.02)
        assert await _subscribers(redis) == 0

        again = Socket()  # a socket arriving after that is served again, from its `add` on
        await hub.add(2_000_002, again)
        assert await _subscribers(redis) == 1
        await publisher.publish(2_000_002, "task.updated", {"n": 3})
        event = await asyncio.wait_for(again.received.get(), 2.0)
        assert event["data"] == {"n": 3}
        assert socket.received.empty()
    finally:
        await hub.stop()
        await redis.aclose()
        await listener_cache.close()
        await publisher_cache.close()
