"""All queries of projects and tasks. Every query is scoped to the owner; deleted rows are invisible."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.tasks.models import Project, Task


async def get_project(session: AsyncSession, owner_id: int, project_id: int) -> Project | None:
    result = await session.execute(
        select(Project).where(Project.id == project_id, Project.owner_id == owner_id, Project.deleted_at.is_(None))
    )
    return result.scalar_one_or_none()


async def list_projects(
    session: AsyncSession, owner_id: int, after: int | None, limit: int, archived: bool | None
) -> Sequence[Project]:
    stmt = select(Project).where(Project.owner_id == owner_id, Project.deleted_at.is_(None))
    if archived is not None:
        stmt = stmt.where(Project.archived.is_(archived))
    if after is not None:
        stmt = stmt.where(Project.id > after)
    result = await session.execute(stmt.order_by(Project.id).limit(limit + 1))
    return result.scalars().all()


async def get_task(session: AsyncSession, owner_id: int, task_id: int) -> Task | None:
    result = await session.execute(
        select(Task).where(Task.id == task_id, Task.owner_id == owner_id, Task.deleted_at.is_(None))
    )
    return result.scalar_one_or_none()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def task_list_query(
    owner_id: int,
    *,
    after: int | None,
    project_id: int | None = None,
    done: bool | None = None,
    q: str | None = None,
    parent_id: int | None = None,
) -> Select[Any]:
    stmt = select(*Task.__table__.columns).where(Task.owner_id == owner_id, Task.deleted_at.is_(None))
    if project_id is not None:
        stmt = stmt.where(Task.project_id == project_id)
    if done is not None:
        stmt = stmt.where(Task.done.is_(done))
    if parent_id is not None:
        stmt = stmt.where(Task.parent_id == parent_id)
    if q:
        pattern = f"%{_escape_like(q)}%"
        stmt = stmt.where(or_(Task.title.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\")))
    if after is not None:
        stmt = stmt.where(Task.id > after)
    return stmt.order_by(Task.id)


async def list_task_rows(session: AsyncSession, stmt: Select[Any], limit: int) -> Sequence[Row[Any]]:
    """Plain rows (no ORM instances): the list endpoint serialises them directly."""
    result = await session.execute(stmt.limit(limit + 1))
    rows: Sequence[Row[Any]] = result.all()
    return rows


async def has_children(session: AsyncSession, owner_id: int, task_id: int) -> bool:
    result = await session.execute(
        select(Task.id).where(Task.owner_id == owner_id, Task.parent_id == task_id, Task.deleted_at.is_(None)).limit(1)
    )
    return result.first() is not None


async def soft_delete_tasks_of_project(session: AsyncSession, owner_id: int, project_id: int, now: datetime) -> None:
    await session.execute(
        update(Task)
        .where(Task.owner_id == owner_id, Task.project_id == project_id, Task.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
    )


async def soft_delete_subtasks(session: AsyncSession, owner_id: int, parent_id: int, now: datetime) -> None:
    await session.execute(
        update(Task)
        .where(Task.owner_id == owner_id, Task.parent_id == parent_id, Task.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
    )
