"""Which Redis keys changed since a moment, without a pass over the keys: the server's own client-side-caching
*tracking* in broadcasting mode (`CLIENT TRACKING on REDIRECT <id> BCAST`, Redis ≥ 6.2, Valkey), a per-client
feature — unlike keyspace notifications it needs no `CONFIG SET`, so managed servers (Render's Key Value, ElastiCache)
allow it.

`KeyWatch.start(url)` opens two connections to the server: a subscriber on `__redis__:invalidate` and a tracking
client redirecting its invalidations there, with no prefix (every key of every database). From the moment `start`
returns, the server sends the name of every key that is written, deleted, renamed, expired or evicted — whichever
command, script or transaction did it — to the subscriber, which collects them.

`await watch.changed()`, called once the writers have stopped (every write they made acknowledged), returns that
set, and **guarantees it holds every key modified since `start`**, or raises `WatchLost` with the reason:

- *Nothing in flight is missed.* The server queues a broadcast invalidation while the write runs and sends the
  batch in `beforeSleep`, before it writes any client's reply (`trackingBroadcastInvalidationMessages` precedes
  `handleClientsWithPendingWrites` in every version since 6.0): a write whose reply a writer has received has its
  key in the subscriber's output buffer already. `changed` then publishes a token on a channel the subscriber also
  listens to, and waits for it: the subscriber reads its buffer in order, so when the token arrives every earlier
  invalidation has been read.
- *The watch was never interrupted.* Any error on the subscriber's connection (a reset, the server dropping a slow
  subscriber at its output-buffer limit) marks the watch lost; the tracking client must still report tracking
  `on`, `bcast`, redirecting to the subscriber's id and not `broken_redirect` (`CLIENT TRACKINGINFO`); the server's
  `run_id` must be the same (not restarted).
- *No change the tracking does not report.* A flush (FLUSHALL/FLUSHDB of any database) arrives as a null message:
  lost. SWAPDB and DEBUG (RELOAD, …) change keys without invalidating them, so their call counts (`INFO
  commandstats`) must not have moved — nor may the counters have been reset (`CONFIG RESETSTAT`, seen as
  `total_commands_processed` going down or `config|resetstat` moving).
- *Bounded.* More than `limit` changed names (a keyspace rewritten wholesale): lost — a pass over every key is then
  as cheap.

Keys of every database are reported (tracking does not say which): callers treat a name as "maybe changed" in the
database they copy — checking it costs one lookup. The watch reads nothing of the data and writes nothing; it costs
the server one name per write in a buffer flushed every event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets
from timetodo.ops.adapters.redis import RedisOpError

INVALIDATE = b"__redis__:invalidate"
UNTRACKED = ("swapdb", "debug", "config|resetstat")
"""Commands that change keys without an invalidation (or hide such a change): their call counts must not move."""
DEFAULT_LIMIT = 200_000
BARRIER_TIMEOUT_S = 30.0


class WatchRefused(RedisOpError):
    """The server would not start the watch (Redis < 6.2, CLIENT or SUBSCRIBE not allowed for this user, INFO
    refused): the caller compares every key instead."""


class WatchLost(RedisOpError):
    """The watch cannot prove it saw every change (see the module): the caller compares every key instead."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stats(info: dict[str, Any]) -> dict[str, int]:
    """The guard's figures from INFO (all sections)."""
    out = {"total_commands_processed": int(info.get("total_commands_processed", 0))}
    for name in UNTRACKED:
        entry = info.get(f"cmdstat_{name}")
        out[name] = int(entry["calls"]) if isinstance(entry, dict) else 0
    return out


class KeyWatch:
    """See the module. Use `start`, then `changed` once, then `close` (also on errors)."""

    def __init__(self, url: str, limit: int, socket_timeout: float) -> None:
        self.limit = limit
        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=socket_timeout, protocol=2)
        self.subscriber: Any = None
        self.tracker: Any = None
        self.subscriber_id = 0
        self.keys: set[bytes] = set()
        self.lost: str | None = None
        self.token = b"ttd-migrate:barrier:" + secrets.token_hex(8).encode()
        self.barrier = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.run_id = ""
        self.stats: dict[str, int] = {}

    @classmethod
    async def start(cls, url: str, *, limit: int = DEFAULT_LIMIT, socket_timeout: float = 30.0) -> KeyWatch:
        """`socket_timeout` bounds each command's answer; the subscriber waits for messages without a limit."""
        watch = cls(url, limit, socket_timeout)
        try:
            await watch._start()
        except BaseException as exc:
            await watch.close()
            if isinstance(exc, redis_errors.ResponseError):
                raise WatchRefused(f"Redis refused key tracking: {mask_secrets(str(exc))}") from None
            if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
                raise WatchRefused(f"Redis key tracking not started: {mask_secrets(str(exc))}") from None
            raise
        return watch

    async def _command(self, connection: Any, *args: Any) -> Any:
        await connection.send_command(*args)
        reply = await connection.read_response()
        if isinstance(reply, redis_errors.ResponseError):
            raise reply
        return reply

    async def _start(self) -> None:
        info = await self.client.info("everything")
        self.run_id, self.stats = str(info.get("run_id", "")), _stats(info)
        pool = self.client.connection_pool
        self.subscriber = await pool.get_connection()  # type: ignore[no-untyped-call]
        self.subscriber_id = int(await self._command(self.subscriber, "CLIENT", "ID"))
        await self.subscriber.send_command("SUBSCRIBE", INVALIDATE, self.token)
        for _ in range(2):
            reply = await self.subscriber.read_response()
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
        self.tracker = await pool.get_connection()  # type: ignore[no-untyped-call]
        await self._command(self.tracker, "CLIENT", "TRACKING", "on", "REDIRECT", self.subscriber_id, "BCAST")
        await self._check_tracking()  # CLIENT TRACKINGINFO (6.2+) answers: the guard can run at the end too
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self.subscriber.read_response(timeout=math.inf)  # idle for minutes: fine
                if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
                    continue
                channel, payload = message[1], message[2]
                if channel == self.token:
                    self.barrier.set()
                elif channel == INVALIDATE:
                    if payload is None:
                        self._lose("the source's Redis was flushed (FLUSHALL/FLUSHDB) during the watch")
                    else:
                        self.keys.update(payload if isinstance(payload, list) else [payload])
                        if len(self.keys) > self.limit:
                            self._lose(f"more than {self.limit} keys changed during the watch")
                            self.keys.clear()
                            return
        except asyncio.CancelledError:
            self._lose("the watch was stopped")  # closed, or its event loop ended: later changes go unseen
            raise
        except Exception as exc:  # a reset, the server dropping the subscriber: changes may have been missed
            self._lose(f"the watch's connection failed: {mask_secrets(str(exc))}")
        finally:
            self.barrier.set()

    def _lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    async def _check_tracking(self) -> None:
        info = await self._command(self.tracker, "CLIENT", "TRACKINGINFO")
        fields = dict(zip(info[0::2], info[1::2], strict=True))
        flags = {_text(flag) for flag in fields.get(b"flags", [])}
        redirect = int(fields.get(b"redirect", -1))
        if "on" not in flags or "bcast" not in flags or "broken_redirect" in flags or redirect != self.subscriber_id:
            self._lose(f"key tracking is no longer on (flags {sorted(flags)}, redirect {redirect})")

    async def changed(self) -> set[bytes]:
        """Every key name modified since `start` (see the module for the proof), or `WatchLost`."""
        if self.reader is None or (self.reader.done() and self.lost is None):
            self._lose("the watch was stopped")
        try:
            if self.lost is None:
                await self.client.publish(self.token, b"barrier")
                await asyncio.wait_for(self.barrier.wait(), BARRIER_TIMEOUT_S)
            if self.lost is None:
                await self._check_tracking()
            if self.lost is None:
                info = await self.client.info("everything")
                stats = _stats(info)
                if str(info.get("run_id", "")) != self.run_id:
                    self._lose("the source's Redis restarted during the watch")
                elif stats["total_commands_processed"] < self.stats["total_commands_processed"]:
                    self._lose("the source's Redis statistics were reset during the watch (CONFIG RESETSTAT)")
                else:
                    moved = [name for name in UNTRACKED if stats[name] != self.stats[name]]
                    if moved:
                        self._lose(f"{', '.join(moved).upper()} ran on the source's Redis during the watch")
        except TimeoutError:
            self._lose(f"the watch's barrier did not come back within {BARRIER_TIMEOUT_S:g} s")
        except (redis_errors.RedisError, OSError) as exc:
            self._lose(f"the watch's checks failed: {mask_secrets(str(exc))}")
        if self.lost is not None:
            raise WatchLost(self.lost)
        return set(self.keys)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        for connection in (self.tracker, self.subscriber):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect()
        with contextlib.suppress(Exception):
            await self.client.aclose()
