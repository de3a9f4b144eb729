from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from timetodo.core.deps import API_PREFIX, EventsDep, IdPath, SessionDep, UserIdDep, WriteSessionDep
from timetodo.core.pagination import CursorQuery, LimitQuery, Page
from timetodo.core.validators import Instant, SafeDate
from timetodo.timer import service
from timetodo.timer.schemas import (
    GroupBy,
    TimeEntryIn,
    TimeEntryOut,
    TimeEntryUpdate,
    TimeReport,
    TimerOut,
    TimerStart,
)

router = APIRouter(prefix=API_PREFIX, tags=["time"])


@router.get("/timer", response_model=TimerOut)
async def get_timer(user_id: UserIdDep, session: SessionDep) -> TimerOut:
    entry = await service.get_running(session, user_id)
    return TimerOut(running=service.entry_out(entry) if entry else None)


@router.post("/timer/start", status_code=status.HTTP_201_CREATED, response_model=TimeEntryOut)
async def start_timer(
    data: TimerStart, user_id: UserIdDep, session: WriteSessionDep, events: EventsDep
) -> TimeEntryOut:
    """Start tracking (optionally on a task or project). A running timer is stopped first."""
    entry, stopped = await service.start_timer(session, user_id, data.task_id, data.project_id, data.note)
    if stopped is not None:
        await events.publish(user_id, "time_entry.stopped", service.entry_out(stopped).model_dump(mode="json"))
    out = service.entry_out(entry)
    await events.publish(user_id, "time_entry.started", out.model_dump(mode="json"))
    return out


@router.post("/timer/stop", response_model=TimeEntryOut)
async def stop_timer(user_id: UserIdDep, session: WriteSessionDep, events: EventsDep) -> TimeEntryOut:
    """Stop the running timer (409 `timer_not_running` when there is none)."""
    out = service.entry_out(await service.stop_timer(session, user_id))
    await events.publish(user_id, "time_entry.stopped", out.model_dump(mode="json"))
    return out


@router.get("/time-entries", response_model=Page[TimeEntryOut])
async def list_entries(
    user_id: UserIdDep,
    session: SessionDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    start: Annotated[Instant | None, Query(alias="from", description="Entries ending after this instant")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="Entries starting before this instant")] = None,
) -> Page[TimeEntryOut]:
    rows, nxt = await service.list_entries(session, user_id, cursor, limit, start, end)
    return Page[TimeEntryOut](results=[service.entry_out(r) for r in rows], next_cursor=nxt)


@router.post("/time-entries", status_code=status.HTTP_201_CREATED, response_model=TimeEntryOut)
async def create_entry(data: TimeEntryIn, user_id: UserIdDep, session: WriteSessionDep) -> TimeEntryOut:
    """Record a finished span. 409 `time_entry_overlap` when it shares time with another entry."""
    return service.entry_out(await service.create_entry(session, user_id, data))


@router.get("/time-entries/{entry_id}", response_model=TimeEntryOut)
async def get_entry(entry_id: IdPath, user_id: UserIdDep, session: SessionDep) -> TimeEntryOut:
    return service.entry_out(await service.get_entry(session, user_id, entry_id))


@router.patch("/time-entries/{entry_id}", response_model=TimeEntryOut)
async def update_entry(
    entry_id: IdPath, data: TimeEntryUpdate, user_id: UserIdDep, session: WriteSessionDep
) -> TimeEntryOut:
    return service.entry_out(await service.update_entry(session, user_id, entry_id, data))


@router.delete("/time-entries/{entry_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_entry(entry_id: IdPath, user_id: UserIdDep, session: WriteSessionDep) -> Response:
    await service.delete_entry(session, user_id, entry_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/reports/time", response_model=TimeReport, tags=["reports"])
async def time_report(
    user_id: UserIdDep,
    session: SessionDep,
    date_from: Annotated[SafeDate, Query(alias="from", description="First day (user's time zone)")],
    date_to: Annotated[SafeDate, Query(alias="to", description="Last day, inclusive")],
    group_by: GroupBy = "day",
    format: Literal["json", "csv"] = "json",
) -> object:
    """Tracked time per day, task or project, in the user's time zone (entries across midnight are split).
    `format=csv` downloads the same as CSV."""
    report = await service.time_report(session, user_id, date_from, date_to, group_by)
    if format == "csv":
        filename = f"time-report-{date_from}-{date_to}-{group_by}.csv"
        return Response(
            service.report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return report
