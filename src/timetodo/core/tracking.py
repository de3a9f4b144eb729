"""Change tracking for `GET /sync`: every write to a tracked row stamps it with the owner's next sync version.

Each flush that creates or changes a tracked row (projects, tasks, time entries) increments `users.sync_version`
for that row's owner and stamps the row with the result. The increment is an `UPDATE` of the owner's row, which
the database keeps locked until the transaction ends, so one user's versions commit in order: once version N is
visible to a reader, every version below N is visible too. `GET /sync` relies on that to hand out a token that
never skips a change, without a snapshot spanning several queries.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import BigInteger, column, event, table, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column

# the owner's counter lives on `users` (timetodo.auth.models.User); named here as a plain table so that core
# imports no domain
_users = table("users", column("id"), column("sync_version"))


class SyncTracked:
    """Mixin: the row carries the owner's sync version of its last change (soft deletes included)."""

    owner_id: Mapped[int]
    sync_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")


def _next_version(session: Session, owner_id: int) -> int:
    result = session.connection().execute(
        update(_users)
        .where(_users.c.id == owner_id)
        .values(sync_version=_users.c.sync_version + 1)
        .returning(_users.c.sync_version)
    )
    return int(result.scalar_one())


async def next_version(session: AsyncSession, owner_id: int) -> int:
    """A new version for a change made outside the ORM unit of work (bulk `UPDATE`s)."""
    return await session.run_sync(_next_version, owner_id)


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
