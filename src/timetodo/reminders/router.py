from __future__ import annotations

from fastapi import APIRouter, Response, status

from timetodo.core.deps import API_PREFIX, IdPath, SessionDep, UserIdDep, WriteSessionDep
from timetodo.reminders import service
from timetodo.reminders.schemas import ReminderIn, ReminderOut, SnoozeIn

router = APIRouter(prefix=API_PREFIX, tags=["reminders"])


@router.get("/tasks/{task_id}/reminders", response_model=list[ReminderOut])
async def list_reminders(task_id: IdPath, user_id: UserIdDep, session: SessionDep) -> list[ReminderOut]:
    return [ReminderOut.model_validate(r) for r in await service.list_reminders(session, user_id, task_id)]


@router.post("/tasks/{task_id}/reminders", status_code=status.HTTP_201_CREATED, response_model=ReminderOut)
async def create_reminder(task_id: IdPath, data: ReminderIn, user_id: UserIdDep, session: WriteSessionDep) -> object:
    """At `remind_at`, or `minutes_before` the due (a date-only due counts from 09:00 in your time zone)."""
    return await service.create_reminder(session, user_id, task_id, data)


@router.post("/reminders/{reminder_id}/snooze", response_model=ReminderOut)
async def snooze(reminder_id: IdPath, data: SnoozeIn, user_id: UserIdDep, session: WriteSessionDep) -> object:
    return await service.snooze(session, user_id, reminder_id, data.minutes)


@router.post("/reminders/{reminder_id}/dismiss", response_model=ReminderOut)
async def dismiss(reminder_id: IdPath, user_id: UserIdDep, session: WriteSessionDep) -> object:
    return await service.dismiss(session, user_id, reminder_id)


@router.delete("/reminders/{reminder_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(reminder_id: IdPath, user_id: UserIdDep, session: WriteSessionDep) -> Response:
    await service.delete_reminder(session, user_id, reminder_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
