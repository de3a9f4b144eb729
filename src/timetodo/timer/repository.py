"""All queries of time entries, scoped to the owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth.models import User
from timetodo.tasks.models import Project, Task
from timetodo.timer.models import TimeEntry


async def lock_user(session: AsyncSession, owner_id: int) -> None:
    """Serialise one user's time-entry writes (overlap checks) on PostgreSQL; SQLite writers are serial anyway."""
    if session.get_bind().dialect.name != "sqlite":
        await session.execute(select(User.id).where(User.id == owner_id).with_for_update())


def _live(owner_id: int):  # type: ignore[no-untyped-def]
    return (TimeEntry.owner_id == owner_id, TimeEntry.deleted_at.is_(None))


async def get_running(session: AsyncSession, owner_id: int) -> TimeEntry | None:
    result = await session.execute(select(TimeEntry).where(*_live(owner_id), TimeEntry.ended_at.is_(None)))
    return result.scalar_one_or_none()


async def get_entry(session: AsyncSession, owner_id: int, entry_id: int) -> TimeEntry | None:
    result = await session.execute(select(TimeEntry).where(TimeEntry.id == entry_id, *_live(owner_id)))
    return result.scalar_one_or_none()


async def find_overlap(
    session: AsyncSession, owner_id: int, start: datetime, end: datetime | None, exclude_id: int | None
) -> TimeEntry | None:
    """An entry of this user that shares some time with [start, end) (end None = still running)."""
    stmt = select(TimeEntry).where(*_live(owner_id), or_(TimeEntry.ended_at.is_(None), TimeEntry.ended_at > start))
    if end is not None:
        stmt = stmt.where(TimeEntry.started_at < end)
    if exclude_id is not None:
        stmt = stmt.where(TimeEntry.id != exclude_id)
    result = await session.execute(stmt.order_by(TimeEntry.started_at).limit(1))
    return result.scalar_one_or_none()


async def list_entries(
    session: AsyncSession, owner_id: int, after: int | None, limit: int, start: datetime | None, end: datetime | None
) -> Sequence[TimeEntry]:
    stmt = select(TimeEntry).where(*_live(owner_id))
    if start is not None:
        stmt = stmt.where(or_(TimeEntry.ended_at.is_(None), TimeEntry.ended_at > start))
    if end is not None:
        stmt = stmt.where(TimeEntry.started_at < end)
    if after is not None:
        stmt = stmt.where(TimeEntry.id > after)
    result = await session.execute(stmt.order_by(TimeEntry.id).limit(limit + 1))
    return result.scalars().all()


async def entries_in_range(session: AsyncSession, owner_id: int, start: datetime, end: datetime) -> Sequence[TimeEntry]:
    result = await session.execute(
        select(TimeEntry)
        .where(
            *_live(owner_id), TimeEntry.started_at < end, or_(TimeEntry.ended_at.is_(None), TimeEntry.ended_at > start)
        )
        .order_by(TimeEntry.started_at)
    )
    return result.scalars().all()


async def task_names(session: AsyncSession, owner_id: int, ids: set[int]) -> dict[int, tuple[str, int | None]]:
    if not ids:
        return {}
    result = await session.execute(
        select(Task.id, Task.title, Task.estimate_minutes).where(Task.owner_id == owner_id, Task.id.in_(ids))
    )
    return {row.id: (row.title, row.estimate_minutes) for row in result}


async def project_names(session: AsyncSession, owner_id: int, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    result = await session.execute(
        select(Project.id, Project.name).where(Project.owner_id == owner_id, Project.id.in_(ids))
    )
    return {row.id: row.name for row in result}
