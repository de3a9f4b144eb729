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

A sender that wakes after its slot (a busy event loop) sends later than reserved, closer to the next message of its
chat than the spacing allows — the cause of sporadic 429s under load. So a sender woken more than `PUSH_AFTER` late
pushes its chat's and the bot's next free slot to (now + step) before sending (`push`, one more Redis call, only
when late); woken more than `LATE` late, it takes a new slot instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

MARGIN = 1.05
LATE = 0.15  # seconds: a sender that wakes later than this after its slot (a busy event loop) takes a new slot
MAX_RESLOTS = 3
PUSH_AFTER = 0.01  # seconds: a sender later than this after its slot moves the next slots (see the module)
_PUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local step = tonumber(ARGV[i])
  local next = tonumber(redis.call('GET', key) or '0')
  if now + step > next then
    redis.call('SET', key, now + step, 'PX', math.floor(step / 1000) + 1000)
  end
end
return 0
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
return slot - now
"""


class SendLimiter(Protocol):
    async def acquire(self, chat_id: int) -> float:
        """Wait for this chat's next slot; returns the seconds waited."""


class MemoryLimiter:
    def __init__(self, chat_rate: float, global_rate: float) -> None:
        self.chat_step = MARGIN / chat_rate
        self.bot_step = MARGIN / global_rate
        self._chats: dict[int, float] = {}
        self._bot = 0.0

    def reserve(self, chat_id: int) -> float:
        now = time.monotonic()
        slot = max(now, self._chats.get(chat_id, 0.0), self._bot)
        self._chats[chat_id] = slot + self.chat_step
        self._bot = slot + self.bot_step
        if len(self._chats) > 10_000:  # forget chats whose slot has passed
            self._chats = {chat: at for chat, at in self._chats.items() if at > now}
        return slot - now

    def push(self, chat_id: int) -> None:
        now = time.monotonic()
        self._chats[chat_id] = max(self._chats.get(chat_id, 0.0), now + self.chat_step)
        self._bot = max(self._bot, now + self.bot_step)

    async def acquire(self, chat_id: int) -> float:
        return await _acquire(lambda: _now_reserve(self.reserve(chat_id)), lambda: _now_push(self.push, chat_id))


class RedisLimiter:
    def __init__(self, client: Any, chat_rate: float, global_rate: float, prefix: str = "tg:rate") -> None:
        self.client = client
        self.chat_step = int(MARGIN / chat_rate * 1_000_000)
        self.bot_step = int(MARGIN / global_rate * 1_000_000)
        self.prefix = prefix
        self._script = client.register_script(_RESERVE)
        self._push = client.register_script(_PUSH)

    async def _reserve(self, chat_id: int) -> float:
        micros = await self._script(
            keys=[f"{self.prefix}:chat:{chat_id}", f"{self.prefix}:bot"], args=[self.chat_step, self.bot_step]
        )
        return int(micros) / 1_000_000

    async def push(self, chat_id: int) -> None:
        await self._push(
            keys=[f"{self.prefix}:chat:{chat_id}", f"{self.prefix}:bot"], args=[self.chat_step, self.bot_step]
        )

    async def acquire(self, chat_id: int) -> float:
        return await _acquire(lambda: self._reserve(chat_id), lambda: self.push(chat_id))


async def _now_reserve(wait: float) -> float:
    return wait


async def _now_push(push: Callable[[int], None], chat_id: int) -> None:
    push(chat_id)


async def _acquire(reserve: Callable[[], Awaitable[float]], push: Callable[[], Awaitable[None]]) -> float:
    """Reserve a slot and sleep until it; reserve again when woken very late, push the next slots when woken a
    little late (see the module). Returns the seconds waited."""
    started = time.monotonic()
    for _ in range(MAX_RESLOTS):
        wait = await reserve()
        target = time.monotonic() + wait
        if wait > 0:
            await asyncio.sleep(wait)
        late = time.monotonic() - target
        if late <= LATE:
            if late > PUSH_AFTER:
                await push()
            break
    return time.monotonic() - started
