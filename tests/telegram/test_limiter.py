"""The send limiter: slots spaced by 1/rate per chat and for the bot, in-process and shared through Redis; callback
data within Telegram's 64 bytes and versioned."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis.asyncio as aioredis

from tests.support import Services
from timetodo.telegram.bot import decode, encode
from timetodo.telegram.limiter import MARGIN, MemoryLimiter, RedisLimiter


def test_memory_limiter_spaces_one_chat_and_the_bot() -> None:
    limiter = MemoryLimiter(chat_rate=1.0, global_rate=10.0)
    waits = [limiter.reserve(1) for _ in range(3)]
    assert waits[0] == pytest.approx(0, abs=0.01)
    assert waits[1] == pytest.approx(MARGIN, abs=0.01) and waits[2] == pytest.approx(2 * MARGIN, abs=0.01)
    other = MemoryLimiter(chat_rate=1.0, global_rate=10.0)
    spread = [other.reserve(chat) for chat in range(20)]  # 20 chats: the bot's 10/s is the limit
    assert spread[-1] == pytest.approx(19 * MARGIN / 10, abs=0.01)
    assert all(b > a for a, b in itertools.pairwise(spread))


async def test_redis_limiter_is_shared_by_instances(services: Services) -> None:
    first = aioredis.Redis.from_url(services.redis_url)
    second = aioredis.Redis.from_url(services.redis_url)
    prefix = f"tg:test:{time.monotonic_ns()}"
    try:
        a = RedisLimiter(first, chat_rate=2.0, global_rate=20.0, prefix=prefix)
        b = RedisLimiter(second, chat_rate=2.0, global_rate=20.0, prefix=prefix)
        started = time.monotonic()
        await asyncio.gather(a.acquire(5), b.acquire(5), a.acquire(5), b.acquire(5))
        elapsed = time.monotonic() - started
        # four sends to one chat at 2/s from two "instances": the last one waits three slots
        assert elapsed >= 3 * MARGIN / 2.0 - 0.05
    finally:
        await first.aclose()
        await second.aclose()


def test_callback_data_is_versioned_and_short() -> None:
    data = encode("d", 2**63 - 1)
    assert len(data.encode()) <= 64 and decode(data) == ("d", str(2**63 - 1))
    assert decode("0:d:5") is None and decode("garbage") is None and decode(None) is None
    with pytest.raises(ValueError, match="64 bytes"):
        encode("l", "x" * 70)
