"""Change tracking for `GET /sync`: every write to a tracked row stamps it with a sync version of its owner.

Guarantee (what `GET /sync` relies on): `watermark(owner)` returns a version W such that every transaction that
stamped a row of `owner` with a version ≤ W has ended. A reader that returns only changes with versions ≤ W, and
hands out a token ≤ W, never skips a change: a transaction still running (or starting later) commits versions > W.

PostgreSQL — a user's writes do not serialise: versions come from one sequence (`ttd_sync_next_version`, migration
0012), which first takes a *shared* transaction-level advisory lock keyed by the owner, then `nextval`. The
watermark (`ttd_sync_watermark`) takes the same lock *exclusively* — waiting for the owner's write transactions that
hold a version — and reads the sequence's last value while holding it. Proof: a transaction T of the owner with
version v ≤ W called `nextval` before the reader read W, and held the shared lock from before its `nextval` until it
ended; the reader held the exclusive lock when it read W, so T had ended by then. A transaction that gets its
version after the read gets v > W (the sequence only grows). The reader's lock is held for one statement in its own
transaction, so writers of that user wait at most for that (plus the in-flight writes it waits for).

SQLite — one writer at a time anyway: the owner's counter `users.sync_version` is incremented (row kept locked to
the end of the transaction), and the watermark is that counter.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import BigInteger, column, event, func, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

# the owner's counter lives on `users` (timetodo.auth.models.User); named here as a plain table so that core
# imports no domain
_users = table("users", column("id"), column("sync_version"))

# the SQL that stamps a write of owner $n on PostgreSQL (used inside single-statement writes)
PG_NEXT_VERSION = "ttd_sync_next_version({owner})"


class SyncTracked:
    """Mixin: the row carries the owner's sync version of its last change (soft deletes included)."""

    owner_id: Mapped[int]
    sync_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")


def _next_version(session: Session, owner_id: int) -> int:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        return int(connection.execute(select(func.ttd_sync_next_version(owner_id))).scalar_one())
    result = connection.execute(
        update(_users)
        .where(_users.c.id == owner_id)
        .values(sync_version=_users.c.sync_version + 1)
        .returning(_users.c.sync_version)
    )
    return int(result.scalar_one())


async def next_version(session: AsyncSession, owner_id: int) -> int:
    """A new version for a change made outside the ORM unit of work (bulk `UPDATE`s)."""
    return await session.run_sync(_next_version, owner_id)


async def watermark(session: AsyncSession, owner_id: int) -> int:
    """The owner's watermark (see the module). On PostgreSQL this ends the session's transaction (committing it:
    call it first, before anything else in the session), so the exclusive lock is released at once."""
    if session.get_bind().dialect.name == "postgresql":
        value = (await session.execute(select(func.ttd_sync_watermark(owner_id)))).scalar_one()
        await session.commit()
        return int(value)
    return int((await session.execute(select(_users.c.sync_version).where(_users.c.id == owner_id))).scalar_one())


@event.listens_for(Session, "before_flush")
def _stamp_changes(session: Session, _flush_context: Any, _instances: Any) -> None:
    by_owner: dict[int, list[SyncTracked]] = defaultdict(list)
    for obj in session.new:
        if isinstance(obj, SyncTracked):
            by_owner[obj.owner_id].append(obj)
    for obj in session.dirty:
        if isinstance(obj, SyncTracked) and session.is_modified(obj, include_collections=False):
            by_owner[obj.owner_id].append(obj)
    for owner_id in sorted(by_owner):  # one lock order for every transaction
        version = _next_version(session, owner_id)
        for obj in by_owner[owner_id]:
            obj.sync_version = version
