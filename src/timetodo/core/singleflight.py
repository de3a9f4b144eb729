"""One refresh at a time: callers that need a value while it is being fetched wait for that fetch instead of
starting their own.

`SingleFlight(fetch)` is an awaitable callable: `await refresh()` runs `fetch()` unless a run started by an earlier
caller on the same event loop is still in flight, in which case it waits for that run and gets its result (or its
exception). A caller that is cancelled while waiting does not cancel the shared run (other callers still wait for
it). A run belongs to the event loop that started it: a caller on another loop (tests run several) starts its own.

Why: the per-process caches refreshed on the request path (maintenance flag, forwarding setting: every request reads
both) expire for every request in flight at the same moment; without this each of them — 16 per worker under the
benchmark's load — opened its own session (a checkout, BEGIN, SELECT, ROLLBACK; new connections past the pool's
size) once a second, and the requests queued behind that burst set the p99 (bench/RESULTS.md, issue 14).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._run: asyncio.Future[T] | None = None
        self.runs = 0  # how many fetches started (tests)

    async def _call(self) -> T:
        return await self._fetch()

    async def __call__(self) -> T:
        loop = asyncio.get_running_loop()
        run = self._run
        if run is None or run.done() or run.get_loop() is not loop:
            run = self._run = loop.create_task(self._call())
            self.runs += 1
        return await asyncio.shield(run)
