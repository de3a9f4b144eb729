from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.core.database import UTCDateTime
from timetodo.reminders.models import Reminder
from timetodo.tasks.models import Task


async def get(session: AsyncSession, owner_id: int, reminder_id: int) -> Reminder | None:
    result = await session.execute(
        select(Reminder).where(Reminder.id == reminder_id, Reminder.owner_id == owner_id, Reminder.deleted_at.is_(None))
    )
    return result.scalar_one_or_none()


async def list_for_task(session: AsyncSession, owner_id: int, task_id: int) -> Sequence[Reminder]:
    result = await session.execute(
        select(Reminder)
        .where(Reminder.owner_id == owner_id, Reminder.task_id == task_id, Reminder.deleted_at.is_(None))
        .order_by(Reminder.id)
    )
    return result.scalars().all()


async def relative_for_task(session: AsyncSession, task_id: int) -> Sequence[Reminder]:
    result = await session.execute(
        select(Reminder).where(
            Reminder.task_id == task_id, Reminder.minutes_before.is_not(None), Reminder.deleted_at.is_(None)
        )
    )
    return result.scalars().all()


async def dismiss_of_deleted_tasks(session: AsyncSession, owner_id: int, now: datetime) -> None:
    """Pending reminders of the owner's deleted tasks will never fire: dismiss them."""
    deleted_tasks = select(Task.id).where(Task.owner_id == owner_id, Task.deleted_at.is_not(None))
    await session.execute(
        update(Reminder)
        .where(
            Reminder.owner_id == owner_id,
            Reminder.state.in_(("scheduled", "snoozed")),
            Reminder.deleted_at.is_(None),
            Reminder.task_id.in_(deleted_tasks),
        )
        .values(state="dismissed", updated_at=now)
    )


_CLAIM_SQL = """
UPDATE reminders SET state = 'sent', sent_at = :now, updated_at = :now
WHERE id IN (
    SELECT id FROM reminders
    WHERE state IN ('scheduled', 'snoozed') AND deleted_at IS NULL AND fire_at <= :now
      AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = reminders.task_id AND tasks.deleted_at IS NOT NULL)
    ORDER BY fire_at
    LIMIT :batch
    {lock}
)
RETURNING id, owner_id, task_id, fire_at
"""


async def claim_due(session: AsyncSession, now: datetime, batch: int) -> list[dict[str, Any]]:
    """Atomically mark due reminders as sent and return them. Two instances never get the same reminder:
    FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite runs one writer at a time."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    stmt = (
        text(_CLAIM_SQL.format(lock="" if sqlite else "FOR UPDATE SKIP LOCKED"))
        .bindparams(bindparam("now", type_=UTCDateTime()), bindparam("batch", type_=Integer()))
        .columns(id=BigInteger(), owner_id=BigInteger(), task_id=BigInteger(), fire_at=UTCDateTime())
    )
    result = await session.execute(stmt, {"now": now, "batch": batch})
    return [dict(row._mapping) for row in result]
