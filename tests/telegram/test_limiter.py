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


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_sender_woken_late_keeps_its_chats_spacing(kind: str, services: Services) -> None:
    """The cause of sporadic 429s under load: a sender woken late (event loop busy) sent closer to the chat's next
    message than the limit allows. Now the next send to that chat is spaced from when the late one really went."""
    client = aioredis.Redis.from_url(services.redis_url)
    prefix = f"tg:test:{time.monotonic_ns()}"
    limiter = (
        MemoryLimiter(chat_rate=4.0, global_rate=100.0)
        if kind == "memory"
        else RedisLimiter(client, chat_rate=4.0, global_rate=100.0, prefix=prefix)
    )
    step = MARGIN / 4.0
    try:
        await limiter.acquire(7)  # the chat's first message: its next slot is `step` from now

        async def late_sender() -> float:
            await limiter.acquire(7)
            return time.monotonic()

        sender = asyncio.create_task(late_sender())
        await asyncio.sleep(step - 0.05)  # the sender sleeps towards its slot …
        time.sleep(0.15)  # … while the event loop is busy: it wakes ~0.1 s late (less than LATE: no new slot)
        sent_late = await sender
        await limiter.acquire(7)
        # at least the nominal 1/chat_rate after the late send (before the gate: only step - 0.1)
        assert time.monotonic() - sent_late >= 1 / 4.0 - 0.005
    finally:
        await client.aclose()


def test_callback_data_is_versioned_and_short() -> None:
    data = encode("d", 2**63 - 1)
    assert len(data.encode()) <= 64 and decode(data) == ("d", str(2**63 - 1))
    assert decode("0:d:5") is None and decode("garbage") is None and decode(None) is None
    with pytest.raises(ValueError, match="64 bytes"):
        encode("l", "x" * 70)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_senders_released_together_by_a_stall_send_at_the_bots_rate(kind: str, services: Services) -> None:
    """A stalled process wakes every sender whose slot passed at once; the gate on actual send times spreads them
    at 1/global_rate (the burst that made the fake answer 429 under load)."""
    client = aioredis.Redis.from_url(services.redis_url)
    prefix = f"tg:test:{time.monotonic_ns()}"
    limiter = (
        MemoryLimiter(chat_rate=1.0, global_rate=20.0)
        if kind == "memory"
        else RedisLimiter(client, chat_rate=1.0, global_rate=20.0, prefix=prefix)
    )
    granted: list[float] = []  # the send times the gate granted, on the limiter's clock
    limiter.on_grant = lambda _chat, at: granted.append(at)

    try:
        senders = [asyncio.create_task(limiter.acquire(chat)) for chat in range(10)]  # slots 52.5 ms apart
        await asyncio.sleep(0.01)
        time.sleep(0.3)  # the stall: ~6 slots pass
        await asyncio.gather(*senders)
        # on the limiter's own clock (the senders' wake-ups after it carry the test process's scheduling jitter)
        gaps = [b - a for a, b in itertools.pairwise(sorted(granted))]
        assert len(granted) == 10 and min(gaps) >= 1 / 20.0 - 1e-6, gaps
    finally:
        await client.aclose()
