"""One-round-trip statements on PostgreSQL for the hot paths (list/get/create of tasks).

Guarantees:
- One statement, one round trip: the statement runs on the pooled asyncpg connection outside any explicit
  transaction (PostgreSQL's implicit transaction commits it), so there is no BEGIN/COMMIT/ROLLBACK around it and no
  ping on checkout (asyncpg prepares each distinct statement once per connection and caches it).
- A dead pooled connection (the server restarted, `pg_terminate_backend`, an idle timeout) costs no error: a read
  is retried once on a fresh connection (every pooled connection older than the failure is replaced, as
  SQLAlchemy does on a disconnect) whatever the failure; a write only when the failure proves the statement
  was not run (the driver had not sent it, or the server refused it as it was shutting the session down), so a
  write never runs twice. A write whose connection broke in the middle of the exchange fails (it may have
  committed: retrying could create twice).
- Statements see the same pool as the SQLAlchemy sessions (size, recycle, the closed-connection check on checkout).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from timetodo.core.database import has_nul
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


def _invalidate_pool(engine: AsyncEngine, raw: Any) -> None:
    """What SQLAlchemy does when its own statement hits a disconnect: every connection opened before now is
    replaced at its next checkout (a server restart or a mass `pg_terminate_backend` kills them all), so the retry
    runs on a fresh connection, not on the next dead one of the pool."""
    invalidate = getattr(engine.sync_engine.pool, "_invalidate", None)
    if invalidate is not None:
        invalidate(raw)


async def fetchrow(engine: AsyncEngine, sql: str, *args: Any, write: bool = False) -> asyncpg.Record | None:
    """Run one statement and return its first row (see the module for the retry rule)."""
    if has_nul(args):  # as every statement through SQLAlchemy (timetodo.core.database)
        raise InvalidInput("text must not contain the NUL character (\\u0000)")
    for attempt in (1, 2):
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            try:
                return await driver.fetchrow(sql, *args)
            except BaseException as exc:
                if isinstance(exc, _BROKEN):
                    _invalidate_pool(engine, raw)
                    await connection.invalidate()
                if attempt == 2 or not _retryable(exc, write):
                    raise
    raise AssertionError("unreachable")
