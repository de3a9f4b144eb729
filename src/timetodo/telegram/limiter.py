"""A send-rate limiter shared by every instance: at most `chat_rate` messages per second to one chat and
`global_rate` per second for the bot (Telegram: about 1/s per chat, 30/s overall).

Each send reserves one slot that is free for its chat and for the bot — slot = max(now, the chat's next, the bot's
next); then the chat's next = slot + 1/chat_rate and the bot's next = slot + 1/global_rate (GCRA without burst) — and
sleeps until it, so callers queue in order instead of polling. Bot slots only move forward, so the global rate holds
exactly; a message held back by its chat also holds back those reserved after it (senders interleave chats to avoid
that). With Redis the reservation is one
Lua script (atomic, one clock: Redis's TIME); without Redis it is the same arithmetic in the process, valid for
one process only. Slots are spaced `MARGIN` wider than the nominal rate so that network jitter between the limiter
and Telegram does not turn into 429s.

Slots alone do not hold the limits when the sending process stalls (a busy machine): senders whose slots passed
during the stall wake together and send in a burst — the cause of sporadic 429s under load. So after its slot each
sender passes a gate on the *actual* send times (`gate`, one more atomic Redis call): a second reservation, taken
when the sender is really about to send, at least MARGIN/chat_rate after the chat's previous one and 1/global_rate
after the bot's — senders released together by a stall get consecutive send times instead of one burst. The bot's gate uses the nominal
rate, its slots the `MARGIN`-wider one, so a backlog after a stall drains at the full rate; a chat's gate keeps the
margin (a chat rarely has a backlog, and its one-second limit leaves the least room for jitter after the gate). A sender woken more than
`LATE` after its slot takes a new slot first. A send whose slot is now (no queue: the common case of a reply)
passes the gate in the same atomic call as its reservation — one Redis round trip instead of two.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

MARGIN = 1.05
LATE = 0.15  # seconds: a sender that wakes later than this after its slot (a busy event loop) takes a new slot
MAX_RESLOTS = 3
_T = TypeVar("_T")
_GATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local chat = tonumber(redis.call('GET', KEYS[1]) or '0')
local bot = tonumber(redis.call('GET', KEYS[2]) or '0')
local chat_gap = tonumber(ARGV[1])
local bot_gap = tonumber(ARGV[2])
local at = math.max(now, chat + chat_gap, bot + bot_gap)
redis.call('SET', KEYS[1], at, 'PX', math.floor((at - now + chat_gap) / 1000) + 1000)
redis.call('SET', KEYS[2], at, 'PX', math.floor((at - now + bot_gap) / 1000) + 1000)
return {at - now, at}
"""
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local chat = tonumber(redis.call('GET', KEYS[1]) or '0')
local bot = tonumber(redis.call('GET', KEYS[2]) or '0')
local slot = math.max(now, chat, bot)
local chat_step = tonumber(ARGV[1])
local bot_step = tonumber(ARGV[2])
redis.call('SET', KEYS[1], slot + chat_step, 'PX', math.floor((slot - now + chat_step) / 1000) + 1000)
redis.call('SET', KEYS[2], slot + bot_step, 'PX', math.floor((slot - now + bot_step) / 1000) + 1000)
if slot > now then
  return {slot - now, -1, 0}
end
local sent_chat = tonumber(redis.call('GET', KEYS[3]) or '0')
local sent_bot = tonumber(redis.call('GET', KEYS[4]) or '0')
local chat_gap = tonumber(ARGV[3])
local bot_gap = tonumber(ARGV[4])
local at = math.max(now, sent_chat + chat_gap, sent_bot + bot_gap)
redis.call('SET', KEYS[3], at, 'PX', math.floor((at - now + chat_gap) / 1000) + 1000)
redis.call('SET', KEYS[4], at, 'PX', math.floor((at - now + bot_gap) / 1000) + 1000)
return {0, at - now, at}
"""
Grant = tuple[float, float]
"""The gate's answer: (seconds to wait, the send time it granted on the limiter's clock — Redis's TIME or this
process's monotonic clock — in seconds)."""
Reservation = tuple[float, Grant | None]
"""(seconds to the slot, None) — or, when the slot is now, (0, the gate's grant): the gate was passed in the same
call (one round trip instead of two for a send that does not queue)."""
OnGrant = Callable[[int, float], None]
"""`on_grant(chat_id, granted_at)`: called for every send the limiter lets through (tests check the limits on
these times, on the limiter's one clock, free of the jitter between the limiter and Telegram)."""


class SendLimiter(Protocol):
    async def acquire(self, chat_id: int) -> float:
        """Wait for this chat's next slot; returns the seconds waited."""


class MemoryLimiter:
    def __init__(self, chat_rate: float, global_rate: float) -> None:
        self.chat_step = MARGIN / chat_rate
        self.bot_step = MARGIN / global_rate
        self._chats: dict[int, float] = {}
        self._bot = 0.0
        self.chat_gap = self.chat_step
        self.bot_gap = 1 / global_rate
        self._chat_sent: dict[int, float] = {}
        self._bot_sent = 0.0
        self.on_grant: OnGrant | None = None

    def reserve(self, chat_id: int) -> float:
        now = time.monotonic()
        slot = max(now, self._chats.get(chat_id, 0.0), self._bot)
        self._chats[chat_id] = slot + self.chat_step
        self._bot = slot + self.bot_step
        if len(self._chats) > 10_000:  # forget chats whose slot has passed
            self._chats = {chat: at for chat, at in self._chats.items() if at > now}
        return slot - now

    def reserve_or_pass(self, chat_id: int) -> Reservation:
        wait = self.reserve(chat_id)
        return (wait, None) if wait > 0 else (0.0, self.gate(chat_id))

    def gate(self, chat_id: int) -> Grant:
        now = time.monotonic()
        at = max(now, self._chat_sent.get(chat_id, -1e9) + self.chat_gap, self._bot_sent + self.bot_gap)
        self._chat_sent[chat_id] = self._bot_sent = at
        if len(self._chat_sent) > 10_000:
            self._chat_sent = {chat: sent for chat, sent in self._chat_sent.items() if sent > now - self.chat_gap}
        return at - now, at

    async def acquire(self, chat_id: int) -> float:
        return await _acquire(
            lambda: _now(self.reserve_or_pass(chat_id)), lambda: _now(self.gate(chat_id)), chat_id, self.on_grant
        )


class RedisLimiter:
    def __init__(self, client: Any, chat_rate: float, global_rate: float, prefix: str = "tg:rate") -> None:
        self.client = client
        self.chat_step = int(MARGIN / chat_rate * 1_000_000)
        self.bot_step = int(MARGIN / global_rate * 1_000_000)
        self.prefix = prefix
        self._script = client.register_script(_RESERVE)
        self.chat_gap = self.chat_step
        self.bot_gap = math.ceil(1_000_000 / global_rate)  # whole microseconds, never under 1/global_rate
        self._gate = client.register_script(_GATE)
        self.on_grant: OnGrant | None = None

    async def _reserve(self, chat_id: int) -> Reservation:
        wait, gated, at = await self._script(
            keys=[
                f"{self.prefix}:chat:{chat_id}",
                f"{self.prefix}:bot",
                f"{self.prefix}:sent:{chat_id}",
                f"{self.prefix}:sent",
            ],
            args=[self.chat_step, self.bot_step, self.chat_gap, self.bot_gap],
        )
        if int(gated) < 0:
            return int(wait) / 1_000_000, None
        return 0.0, (int(gated) / 1_000_000, int(at) / 1_000_000)

    async def _pass_gate(self, chat_id: int) -> Grant:
        wait, at = await self._gate(
            keys=[f"{self.prefix}:sent:{chat_id}", f"{self.prefix}:sent"], args=[self.chat_gap, self.bot_gap]
        )
        return int(wait) / 1_000_000, int(at) / 1_000_000

    async def acquire(self, chat_id: int) -> float:
        return await _acquire(lambda: self._reserve(chat_id), lambda: self._pass_gate(chat_id), chat_id, self.on_grant)


async def _now(value: _T) -> _T:
    return value


async def _acquire(
    reserve: Callable[[], Awaitable[Reservation]],
    gate: Callable[[], Awaitable[Grant]],
    chat_id: int,
    on_grant: OnGrant | None,
) -> float:
    """Reserve a slot and sleep until it (a new slot when woken very late), then pass the gate on actual send times
    (see the module; a slot that is now passes the gate in the reservation's own call). Returns the seconds
    waited."""
    started = time.monotonic()
    for _ in range(MAX_RESLOTS):
        wait, grant = await reserve()
        if grant is not None:
            break
        target = time.monotonic() + wait
        if wait > 0:
            await asyncio.sleep(wait)
        if time.monotonic() - target <= LATE:
            break
    if grant is None:
        grant = await gate()
    if on_grant is not None:
        on_grant(chat_id, grant[1])
    if grant[0] > 0:
        await asyncio.sleep(grant[0])
    return time.monotonic() - started
