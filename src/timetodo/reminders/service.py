"""Reminders of tasks and the scheduler that fires them exactly once across instances."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from timetodo.core.database import utcnow
from timetodo.core.errors import InvalidInput, MaintenanceActive, NotFound
from timetodo.core.maintenance import guard_write
from timetodo.reminders import repository
from timetodo.reminders.models import Reminder
from timetodo.reminders.schemas import ReminderIn
from timetodo.tasks import repository as tasks_repository
from timetodo.tasks.models import Task
from timetodo.tasks.recurrence import parse_rule

log = logging.getLogger("timetodo.reminders")
DATE_ONLY_REMINDER_TIME = time(9, 0)
CLAIM_BATCH = 100


def _field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput([{"field": field, "loc": ["body", field], "message": message, "type": "value_error"}])


async def due_instant(session: AsyncSession, task: Task) -> datetime | None:
    """The due moment as a UTC instant: zoned datetimes as they are, floating ones and dates (at 09:00) in the
    owner's time zone."""
    if task.due_utc is not None:
        return task.due_utc
    if task.due_datetime is None and task.due_date is None:
        return None
    zone = ZoneInfo(await tasks_repository.owner_timezone(session, task.owner_id))
    local = task.due_datetime or datetime.combine(task.due_date, DATE_ONLY_REMINDER_TIME)  # type: ignore[arg-type]
    return local.replace(tzinfo=zone).astimezone(ZoneInfo("UTC"))


async def create_reminder(session: AsyncSession, owner_id: int, task_id: int, data: ReminderIn) -> Reminder:
    task = await tasks_repository.get_task(session, owner_id, task_id)
    if task is None:
        raise NotFound("Task not found")
    if data.minutes_before is not None:
        due = await due_instant(session, task)
        if due is None:
            raise _field_error("minutes_before", "the task has no due date to count back from")
        fire_at = due - timedelta(minutes=data.minutes_before)
    else:
        assert data.remind_at is not None
        fire_at = data.remind_at
        if task.recurrence_rule:
            until = parse_rule(task.recurrence_rule).until
            if until is not None:
                zone = ZoneInfo(task.due_timezone or await tasks_repository.owner_timezone(session, owner_id))
                if fire_at > until.replace(tzinfo=zone):
                    raise _field_error("remind_at", f"the task's recurrence ends (UNTIL) on {until.date()}")
    reminder = Reminder(
        owner_id=owner_id,
        task_id=task_id,
        remind_at=data.remind_at,
        minutes_before=data.minutes_before,
        fire_at=fire_at,
        state="scheduled",
    )
    session.add(reminder)
    await session.commit()
    return reminder


async def reschedule_relative(session: AsyncSession, task: Task) -> None:
    """After the task's due moved: relative reminders fire relative to the new due again."""
    due = await due_instant(session, task)
    for reminder in await repository.relative_for_task(session, task.id):
        if due is None:
            reminder.state = "dismissed"
            continue
        reminder.fire_at = due - timedelta(minutes=reminder.minutes_before or 0)
        reminder.state = "scheduled"
        reminder.sent_at = None


class TaskReminders:
    """Keeps reminders in step with their task (registered with `timetodo.tasks.hooks` by the app factory)."""

    async def due_changed(self, session: AsyncSession, task: Task) -> None:
        await reschedule_relative(session, task)

    async def deleted(self, session: AsyncSession, owner_id: int) -> None:
        await repository.dismiss_of_deleted_tasks(session, owner_id, utcnow())


async def get_reminder(session: AsyncSession, owner_id: int, reminder_id: int) -> Reminder:
    reminder = await repository.get(session, owner_id, reminder_id)
    if reminder is None:
        raise NotFound("Reminder not found")
    return reminder


async def list_reminders(session: AsyncSession, owner_id: int, task_id: int) -> list[Reminder]:
    if await tasks_repository.get_task(session, owner_id, task_id) is None:
        raise NotFound("Task not found")
    return list(await repository.list_for_task(session, owner_id, task_id))


async def snooze(session: AsyncSession, owner_id: int, reminder_id: int, minutes: int) -> Reminder:
    reminder = await get_reminder(session, owner_id, reminder_id)
    reminder.state = "snoozed"
    reminder.fire_at = utcnow() + timedelta(minutes=minutes)
    await session.commit()
    return reminder


async def dismiss(session: AsyncSession, owner_id: int, reminder_id: int) -> Reminder:
    reminder = await get_reminder(session, owner_id, reminder_id)
    reminder.state = "dismissed"
    await session.commit()
    return reminder


async def delete_reminder(session: AsyncSession, owner_id: int, reminder_id: int) -> None:
    reminder = await get_reminder(session, owner_id, reminder_id)
    reminder.deleted_at = utcnow()
    await session.commit()


OnClaimed = Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[None]]


async def claim_due(
    session: AsyncSession, retry_after: int, now: datetime | None = None, on_claimed: OnClaimed | None = None
) -> list[dict[str, Any]]:
    """One scheduler tick: claim (mark sent) every due reminder not claimed by another instance. `on_claimed` runs
    inside the claiming transaction (the app wires Telegram delivery here: its outbox rows commit with the claim, so
    a reminder is handed to delivery exactly once, decided by the reminder's own state)."""
    await guard_write(session, retry_after)
    claimed = await repository.claim_due(session, now or utcnow(), CLAIM_BATCH)
    if claimed and on_claimed is not None:
        await on_claimed(session, claimed)
    await session.commit()
    return claimed


async def run_scheduler(
    maker: async_sessionmaker[AsyncSession],
    publish: Any,
    interval: float,
    retry_after: int,
    on_claimed: OnClaimed | None = None,
) -> None:
    """Fire due reminders forever: claim in the database, then publish `reminder.fired` to the owner."""
    while True:
        try:
            async with maker() as session:
                fired = await claim_due(session, retry_after, on_claimed=on_claimed)
            for item in fired:
                await publish(
                    item["owner_id"],
                    "reminder.fired",
                    {"id": item["id"], "task_id": item["task_id"], "fire_at": item["fire_at"].isoformat()},
                )
            if len(fired) == CLAIM_BATCH:
                continue  # more are due: no pause
        except MaintenanceActive:
            pass  # read-only: reminders wait until maintenance ends
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reminder scheduler tick failed")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def scheduler_running(
    maker: async_sessionmaker[AsyncSession],
    publish: Any,
    interval: float,
    retry_after: int,
    on_claimed: OnClaimed | None = None,
) -> Any:
    task = asyncio.create_task(run_scheduler(maker, publish, interval, retry_after, on_claimed))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
