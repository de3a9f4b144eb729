"""Timers, time entries (never overlapping for one user) and time reports in the user's time zone."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth.service import get_user
from timetodo.core.database import utcnow
from timetodo.core.errors import Conflict, ErrorCode, InvalidInput, NotFound
from timetodo.core.pagination import decode_cursor, next_cursor
from timetodo.tasks import repository as tasks_repository
from timetodo.timer import repository
from timetodo.timer.models import TimeEntry
from timetodo.timer.schemas import GroupBy, ReportGroup, TimeEntryIn, TimeEntryOut, TimeEntryUpdate, TimeReport

MAX_REPORT_DAYS = 366


def entry_out(entry: TimeEntry, now: datetime | None = None) -> TimeEntryOut:
    end = entry.ended_at or (now or utcnow())
    return TimeEntryOut(
        id=entry.id,
        task_id=entry.task_id,
        project_id=entry.project_id,
        note=entry.note,
        started_at=entry.started_at,
        ended_at=entry.ended_at,
        duration_seconds=max(0, int((end - entry.started_at).total_seconds())),
        running=entry.ended_at is None,
    )


def _field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput([{"field": field, "loc": ["body", field], "message": message, "type": "value_error"}])


async def _resolve_refs(
    session: AsyncSession, owner_id: int, task_id: int | None, project_id: int | None
) -> tuple[int | None, int | None]:
    if task_id is not None:
        task = await tasks_repository.get_task(session, owner_id, task_id)
        if task is None:
            raise _field_error("task_id", f"task {task_id} does not exist")
        if project_id is None:
            project_id = task.project_id
    if project_id is not None and await tasks_repository.get_project(session, owner_id, project_id) is None:
        raise _field_error("project_id", f"project {project_id} does not exist")
    return task_id, project_id


async def _check_overlap(
    session: AsyncSession, owner_id: int, start: datetime, end: datetime | None, exclude_id: int | None = None
) -> None:
    other = await repository.find_overlap(session, owner_id, start, end, exclude_id)
    if other is not None:
        raise Conflict(
            f"overlaps time entry {other.id} ({other.started_at.isoformat()} – "
            f"{other.ended_at.isoformat() if other.ended_at else 'running'})",
            code=ErrorCode.time_entry_overlap,
        )


async def get_running(session: AsyncSession, owner_id: int) -> TimeEntry | None:
    return await repository.get_running(session, owner_id)


async def start_timer(
    session: AsyncSession, owner_id: int, task_id: int | None, project_id: int | None, note: str
) -> tuple[TimeEntry, TimeEntry | None]:
    """Start a timer; a running one is stopped first. Returns (started, stopped or None)."""
    await repository.lock_user(session, owner_id)
    task_id, project_id = await _resolve_refs(session, owner_id, task_id, project_id)
    now = utcnow()
    stopped = await repository.get_running(session, owner_id)
    if stopped is not None:
        stopped.ended_at = max(now, stopped.started_at)
        await session.flush()
    entry = TimeEntry(owner_id=owner_id, task_id=task_id, project_id=project_id, note=note, started_at=now)
    session.add(entry)
    try:
        await session.commit()
    except IntegrityError as exc:  # another start won the race for "one running entry"
        await session.rollback()
        raise Conflict("another timer was started at the same moment; retry", code=ErrorCode.conflict) from exc
    return entry, stopped


async def stop_timer(session: AsyncSession, owner_id: int) -> TimeEntry:
    await repository.lock_user(session, owner_id)
    entry = await repository.get_running(session, owner_id)
    if entry is None:
        raise Conflict("no timer is running", code=ErrorCode.timer_not_running)
    entry.ended_at = max(utcnow(), entry.started_at)
    await session.commit()
    return entry


async def create_entry(session: AsyncSession, owner_id: int, data: TimeEntryIn) -> TimeEntry:
    await repository.lock_user(session, owner_id)
    task_id, project_id = await _resolve_refs(session, owner_id, data.task_id, data.project_id)
    await _check_overlap(session, owner_id, data.started_at, data.ended_at)
    entry = TimeEntry(
        owner_id=owner_id,
        task_id=task_id,
        project_id=project_id,
        note=data.note,
        started_at=data.started_at,
        ended_at=data.ended_at,
    )
    session.add(entry)
    await session.commit()
    return entry


async def get_entry(session: AsyncSession, owner_id: int, entry_id: int) -> TimeEntry:
    entry = await repository.get_entry(session, owner_id, entry_id)
    if entry is None:
        raise NotFound("Time entry not found")
    return entry


async def update_entry(session: AsyncSession, owner_id: int, entry_id: int, data: TimeEntryUpdate) -> TimeEntry:
    await repository.lock_user(session, owner_id)
    entry = await get_entry(session, owner_id, entry_id)
    fields = data.model_fields_set
    if "note" in fields and data.note is None:
        raise _field_error("note", "'note' cannot be null")
    if "started_at" in fields and data.started_at is None:
        raise _field_error("started_at", "'started_at' cannot be null")
    if "ended_at" in fields and data.ended_at is None and entry.ended_at is not None:
        raise _field_error("ended_at", "a finished entry cannot be made running again; start a timer instead")
    if "task_id" in fields or "project_id" in fields:
        task_id = data.task_id if "task_id" in fields else entry.task_id
        project_id = data.project_id if "project_id" in fields else entry.project_id
        entry.task_id, entry.project_id = await _resolve_refs(session, owner_id, task_id, project_id)
    start = data.started_at if data.started_at is not None else entry.started_at
    end = data.ended_at if "ended_at" in fields else entry.ended_at
    if end is not None and end < start:
        raise _field_error("ended_at", "ended_at is before started_at")
    if end is None and start > utcnow():
        raise _field_error("started_at", "a running entry cannot start in the future")
    await _check_overlap(session, owner_id, start, end, exclude_id=entry.id)
    entry.started_at, entry.ended_at = start, end
    if data.note is not None:
        entry.note = data.note
    entry.updated_at = utcnow()
    await session.commit()
    return entry


async def delete_entry(session: AsyncSession, owner_id: int, entry_id: int) -> None:
    entry = await get_entry(session, owner_id, entry_id)
    entry.deleted_at = entry.updated_at = utcnow()
    if entry.ended_at is None:
        entry.ended_at = max(utcnow(), entry.started_at)
    await session.commit()


async def list_entries(
    session: AsyncSession,
    owner_id: int,
    cursor: str | None,
    limit: int,
    start: datetime | None,
    end: datetime | None,
) -> tuple[Sequence[TimeEntry], str | None]:
    rows = await repository.list_entries(session, owner_id, decode_cursor(cursor), limit, start, end)
    return next_cursor(list(rows), limit)


# Reports -------------------------------------------------------------------------------------------------------


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def split_by_local_day(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[date, float]]:
    """Seconds of [start, end) on each local calendar day (DST-aware: a day may be 23 or 25 hours long)."""
    parts: list[tuple[date, float]] = []
    cursor = start
    while cursor < end:
        day = cursor.astimezone(zone).date()
        boundary = min(end, local_midnight(day + timedelta(days=1), zone))
        if boundary <= cursor:  # defensive: never loop on an odd zone transition
            boundary = end
        parts.append((day, (boundary - cursor).total_seconds()))
        cursor = boundary
    return parts


async def time_report(
    session: AsyncSession, owner_id: int, date_from: date, date_to: date, group_by: GroupBy
) -> TimeReport:
    if date_to < date_from:
        raise InvalidInput(
            [{"field": "to", "loc": ["query", "to"], "message": "'to' is before 'from'", "type": "value_error"}]
        )
    if (date_to - date_from).days >= MAX_REPORT_DAYS:
        raise InvalidInput(
            [
                {
                    "field": "to",
                    "loc": ["query", "to"],
                    "message": f"at most {MAX_REPORT_DAYS} days",
                    "type": "value_error",
                }
            ]
        )
    user = await get_user(session, owner_id)
    zone = ZoneInfo(user.timezone)
    range_start = local_midnight(date_from, zone)
    range_end = local_midnight(date_to + timedelta(days=1), zone)
    now = utcnow()
    totals: dict[Any, float] = defaultdict(float)
    if group_by == "day":
        day = date_from
        while day <= date_to:
            totals[day] = 0.0
            day += timedelta(days=1)
    for entry in await repository.entries_in_range(session, owner_id, range_start, range_end):
        start = max(entry.started_at, range_start)
        end = min(entry.ended_at or now, range_end)
        if end <= start:
            continue
        if group_by == "day":
            for day, seconds in split_by_local_day(start, end, zone):
                totals[day] += seconds
        elif group_by == "task":
            totals[entry.task_id] += (end - start).total_seconds()
        else:
            totals[entry.project_id] += (end - start).total_seconds()

    groups: list[ReportGroup] = []
    if group_by == "day":
        groups = [
            ReportGroup(key=d.isoformat(), label=d.isoformat(), seconds=round(s)) for d, s in sorted(totals.items())
        ]
    elif group_by == "task":
        names = await repository.task_names(session, owner_id, {k for k in totals if k is not None})
        for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            title, estimate = names.get(key, ("(no task)", None)) if key is not None else ("(no task)", None)
            groups.append(ReportGroup(key=key, label=title, seconds=round(seconds), estimate_minutes=estimate))
    else:
        projects = await repository.project_names(session, owner_id, {k for k in totals if k is not None})
        for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            label = projects.get(key, "(no project)") if key is not None else "(no project)"
            groups.append(ReportGroup(key=key, label=label, seconds=round(seconds)))
    return TimeReport(
        date_from=date_from,
        date_to=date_to,
        timezone=user.timezone,
        group_by=group_by,
        total_seconds=round(sum(totals.values())),
        groups=groups,
    )


def report_csv(report: TimeReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.group_by, "label", "seconds", "hours", "estimate_minutes"])
    for group in report.groups:
        label = group.label
        if label[:1] in ("=", "+", "-", "@"):  # no formula injection when opened in a spreadsheet
            label = "'" + label
        writer.writerow(
            [
                group.key if group.key is not None else "",
                label,
                group.seconds,
                f"{group.seconds / 3600:.2f}",
                group.estimate_minutes if group.estimate_minutes is not None else "",
            ]
        )
    writer.writerow(["total", "", report.total_seconds, f"{report.total_seconds / 3600:.2f}", ""])
    return out.getvalue()
