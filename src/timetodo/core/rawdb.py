"""One-round-trip statements on PostgreSQL for the hot paths (tasks list/get/create/update/complete, account state).

API: `await fetchrow(engine, sql, *args, write=False)` runs one statement and returns its first row (or None),
`await fetch(engine, sql, *args)` one read statement and all its rows;
`await close(engine)` closes the engine's statement pool (the app's lifespan does it with the engine's dispose).

Guarantees:
- One statement, one round trip: the statement runs on a connection of the engine's own asyncpg pool (no
  SQLAlchemy checkout, no BEGIN/COMMIT/ROLLBACK, no ping, no reset query when the connection goes back), outside any
  explicit transaction, so PostgreSQL's implicit transaction commits it. asyncpg prepares each distinct statement once
  per connection and caches it.
- The pool belongs to the engine (same server, credentials and TLS settings as `timetodo.core.database`; at most
  `DATABASE_POOL_SIZE` connections, beside the sessions' pool) and to the event loop that first used it: a pool is
  never shared across loops. A statement that finds every connection busy for `POOL_TIMEOUT` fails as a session
  would (SQLAlchemy's pool timeout: 503 + Retry-After).
- A dead pooled connection (the server restarted, `pg_terminate_backend`, an idle timeout) costs no error: asyncpg
  swaps a connection it knows closed on acquire; one that fails mid-statement expires every connection of the pool
  opened before the failure (a restart or a mass `pg_terminate_backend` kills them all), and the statement is
  retried once on a fresh connection — a read whatever the failure, a write only when the failure proves the
  statement was not run (the driver had not sent it, or the server refused it as it was shutting the session down),
  so a write never runs twice. A write whose connection broke in the middle of the exchange fails (it may have
  committed: retrying could create twice).
- Text with a NUL character is refused before it reaches the server (as for every statement through SQLAlchemy).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from timetodo.core.database import has_nul, raw_connect_args
from timetodo.core.errors import InvalidInput

# the statement was not sent, or the server ended the session without running it
_NOT_RUN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InternalClientError,  # the protocol is still busy with the server's goodbye: nothing sent
    asyncpg.exceptions.InterfaceError,  # "connection is closed": nothing sent
    asyncpg.exceptions.AdminShutdownError,  # the server's answer to this statement: terminated before running it
    asyncpg.exceptions.CannotConnectNowError,
)
# the connection broke: the statement may or may not have run (retried only when it is a read)
_BROKEN: tuple[type[BaseException], ...] = (
    *_NOT_RUN,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    ConnectionError,
    OSError,
)


def _retryable(exc: BaseException, write: bool) -> bool:
    return isinstance(exc, _NOT_RUN if write else _BROKEN)


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Nothing to reset: a statement of this module leaves no session state (asyncpg still rolls back a transaction
    left open, which never happens here). asyncpg's default reset is one more round trip per statement."""


class _Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, opening: asyncio.Future[asyncpg.Pool]) -> None:
        self.loop = loop
        self.opening = opening
        self.pool: asyncpg.Pool | None = None
        self.size = 0  # the pool's max_size
        self.in_use = 0  # connections acquired by this module (the pool's only user) and not yet released


POOL_TIMEOUT = 30.0  # SQLAlchemy's default pool_timeout
_pools: weakref.WeakKeyDictionary[Engine, _Pool] = weakref.WeakKeyDictionary()
_loggers: list[Callable[[Any], None]] = []


async def _open(engine: AsyncEngine) -> asyncpg.Pool:
    loop = asyncio.get_running_loop()
    entry = _pools.get(engine.sync_engine)
    if entry is None or entry.loop is not loop:
        if entry is not None and entry.pool is not None:
            entry.pool.terminate()  # its loop is gone (tests run several loops): nothing to wait for
        kwargs = raw_connect_args(engine)
        entry = _Pool(loop, asyncio.ensure_future(asyncpg.create_pool(**kwargs, reset=_no_reset)))
        _pools[engine.sync_engine] = entry
    try:
        pool = await asyncio.shield(entry.opening)
    except BaseException:
        if _pools.get(engine.sync_engine) is entry and entry.opening.done():
            del _pools[engine.sync_engine]  # the next statement tries again
        raise
    entry.pool = pool
    entry.size = pool.get_max_size()
    return pool


async def fetchrow(engine: AsyncEngine, sql: str, *args: Any, write: bool = False) -> asyncpg.Record | None:
    """Run one statement and return its first row (see the module for the retry rule)."""
    return await _run(engine, False, sql, args, write)


async def fetch(engine: AsyncEngine, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one read statement and return all its rows (retried as `fetchrow` retries a read)."""
    return await _run(engine, True, sql, args, False)  # type: ignore[no-any-return]


async def _run(engine: AsyncEngine, many: bool, sql: str, args: tuple[Any, ...], write: bool) -> Any:
    if has_nul(args):
        raise InvalidInput("text must not contain the NUL character (\\u0000)")
    entry = _pools.get(engine.sync_engine)
    if entry is not None and entry.pool is not None and entry.loop is asyncio.get_running_loop():
        pool = entry.pool
    else:
        pool = await _open(engine)
        entry = _pools[engine.sync_engine]
    for attempt in (1, 2):
        # a free slot is handed over at once (asyncpg's queue has a holder): no timeout to arm — asyncpg's wraps the
        # acquire in a task and a timer, ~15 µs per statement; only a wait for a busy pool is bounded
        free = entry.in_use < entry.size
        entry.in_use += 1
        try:
            connection = await (pool.acquire() if free else pool.acquire(timeout=POOL_TIMEOUT))
        except BaseException as exc:
            entry.in_use -= 1
            if isinstance(exc, TimeoutError):
                # every connection busy for as long as a session would wait: the same 503 as SQLAlchemy's
                raise PoolTimeoutError(f"no free database connection in {POOL_TIMEOUT:.0f} s") from None
            raise
        try:
            for logger in _loggers:
                logger(sql)
            return await (connection.fetch(sql, *args) if many else connection.fetchrow(sql, *args))
        except BaseException as exc:
            if isinstance(exc, _BROKEN):
                await pool.expire_connections()
            if attempt == 2 or not _retryable(exc, write):
                raise
        finally:
            try:
                await pool.release(connection)
            finally:
                entry.in_use -= 1
    raise AssertionError("unreachable")


async def close(engine: AsyncEngine) -> None:
    """Close the engine's statement pool (if this loop opened one)."""
    entry = _pools.pop(engine.sync_engine, None)
    if entry is None:
        return
    if entry.loop is not asyncio.get_running_loop():
        if entry.pool is not None:
            entry.pool.terminate()
        return
    try:
        pool = await entry.opening
    except Exception:  # it never opened: nothing to close
        return
    await pool.close()


@contextmanager
def statements_sent(sink: list[str]) -> Iterator[None]:
    """Collect the SQL of every statement this module sends while the block runs (tests count round trips)."""
    _loggers.append(sink.append)
    try:
        yield
    finally:
        _loggers.remove(sink.append)
