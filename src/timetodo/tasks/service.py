"""Projects and tasks: validation across rows, soft deletes, completion.

The hot paths (`list_tasks_json`, `get_task_json`, `create_task_json`, `update_task_json`, `complete_task_json`)
answer with the response body; on PostgreSQL each is one statement — one round trip (see `timetodo.core.rawdb`),
the maintenance guard and the sync version inside the writes' statement; SQLite and the cases that need checks or
hooks (a project or parent to check, a due date that moves reminders, a recurring task) go through a session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.core import rawdb
from timetodo.core.database import Database, utcnow
from timetodo.core.errors import InvalidInput, MaintenanceActive, NotFound
from timetodo.core.pagination import decode_cursor, encode_cursor, next_cursor
from timetodo.core.responses import JSON_OPTIONS
from timetodo.tasks import hooks, repository
from timetodo.tasks.models import Project, Task, TaskCompletion, task_to_dict
from timetodo.tasks.recurrence import Mode, as_datetime, next_occurrence, parse_rule
from timetodo.tasks.schemas import Due, ProjectIn, ProjectUpdate, TaskIn, TaskUpdate


def _field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput([{"field": field, "loc": ["body", field], "message": message, "type": "value_error"}])


# Projects -----------------------------------------------------------------------------------------------------


async def create_project(session: AsyncSession, owner_id: int, data: ProjectIn) -> Project:
    project = Project(owner_id=owner_id, name=data.name, color=data.color, archived=data.archived)
    session.add(project)
    await session.commit()
    return project


async def get_project(session: AsyncSession, owner_id: int, project_id: int) -> Project:
    project = await repository.get_project(session, owner_id, project_id)
    if project is None:
        raise NotFound("Project not found")
    return project


async def list_projects(
    session: AsyncSession, owner_id: int, cursor: str | None, limit: int, archived: bool | None
) -> tuple[Sequence[Project], str | None]:
    rows = await repository.list_projects(session, owner_id, decode_cursor(cursor), limit, archived)
    return next_cursor(list(rows), limit)


async def update_project(session: AsyncSession, owner_id: int, project_id: int, data: ProjectUpdate) -> Project:
    project = await get_project(session, owner_id, project_id)
    for field in data.model_fields_set:
        value = getattr(data, field)
        if value is None and field != "color":
            raise _field_error(field, f"'{field}' cannot be null")
        setattr(project, field, value)
    await session.commit()
    return project


async def delete_project(session: AsyncSession, owner_id: int, project_id: int) -> None:
    project = await get_project(session, owner_id, project_id)
    now = utcnow()
    project.deleted_at = now
    await repository.soft_delete_tasks_of_project(session, owner_id, project_id, now)
    await session.flush()
    await hooks.deleted(session, owner_id)
    await session.commit()


# Tasks --------------------------------------------------------------------------------------------------------


def _due_moment(due_date: date | None, due_datetime: datetime | None, zone: str | None) -> dict[str, Any]:
    """The due date or wall-clock datetime and the derived columns (local date, UTC instant)."""
    due_utc = None
    if due_datetime is not None and zone is not None:
        due_utc = due_datetime.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return {
        "due_date": due_datetime.date() if due_datetime is not None else due_date,
        "due_datetime": due_datetime,
        "due_timezone": zone if due_datetime is not None else None,
        "due_utc": due_utc,
    }


def _set_due_moment(task: Task, due_date: date | None, due_datetime: datetime | None, zone: str | None) -> None:
    for name, value in _due_moment(due_date, due_datetime, zone).items():
        setattr(task, name, value)


def due_columns(due: Due | None) -> dict[str, Any]:
    """Every due/recurrence column of a task whose due is `due` (None: no due)."""
    if due is None:
        columns = _due_moment(None, None, None)
        columns.update(due_string=None, recurrence_rule=None, recurrence_mode=None, recurrence_anchor=None)
        return columns
    columns = _due_moment(due.date, due.datetime, due.timezone)
    columns["due_string"] = due.string
    if due.recurrence is not None:
        columns["recurrence_rule"] = due.recurrence.rule
        columns["recurrence_mode"] = due.recurrence.mode
        columns["recurrence_anchor"] = as_datetime(due.datetime or due.date)  # type: ignore[arg-type]
    else:
        columns.update(recurrence_rule=None, recurrence_mode=None, recurrence_anchor=None)
    return columns


def _apply_due(task: Task, due: Due | None) -> None:
    for name, value in due_columns(due).items():
        setattr(task, name, value)


async def _check_refs(
    session: AsyncSession, owner_id: int, task: Task | None, project_id: int | None, parent_id: int | None
) -> None:
    if project_id is not None and await repository.get_project(session, owner_id, project_id) is None:
        raise _field_error("project_id", f"project {project_id} does not exist")
    if parent_id is not None:
        if task is not None and parent_id == task.id:
            raise _field_error("parent_id", "a task cannot be its own parent")
        parent = await repository.get_task(session, owner_id, parent_id)
        if parent is None:
            raise _field_error("parent_id", f"task {parent_id} does not exist")
        if parent.parent_id is not None:
            raise _field_error("parent_id", "subtasks are one level deep: the parent is itself a subtask")
        if task is not None and await repository.has_children(session, owner_id, task.id):
            raise _field_error("parent_id", "this task has subtasks, so it cannot become a subtask")


async def create_task(session: AsyncSession, owner_id: int, data: TaskIn) -> Task:
    await _check_refs(session, owner_id, None, data.project_id, data.parent_id)
    task = Task(
        owner_id=owner_id,
        title=data.title,
        description=data.description,
        project_id=data.project_id,
        parent_id=data.parent_id,
        priority=data.priority,
        labels=list(dict.fromkeys(data.labels)),
        position=data.position,
        estimate_minutes=data.estimate_minutes,
        done=False,
    )
    _apply_due(task, data.due)
    session.add(task)
    await session.commit()
    return task


async def get_task(session: AsyncSession, owner_id: int, task_id: int) -> Task:
    task = await repository.get_task(session, owner_id, task_id)
    if task is None:
        raise NotFound("Task not found")
    return task


def _local_day_filters(filters: dict[str, Any], timezone: str, overdue: bool | None, today: bool | None) -> None:
    """`overdue` / `today` as the repository's filters: the owner's current local date and time, and today's
    bounds in UTC, in the owner's time zone."""
    zone = ZoneInfo(timezone)
    now = utcnow()
    local_now = now.astimezone(zone)
    if overdue:
        filters["overdue_at"] = (now, local_now.date(), local_now.replace(tzinfo=None))
    if today:
        day = local_now.date()
        start = datetime.combine(day, time(0), zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
        filters["today"] = (day, start, end)


async def list_tasks(
    session: AsyncSession, owner_id: int, cursor: str | None, limit: int, **filters: Any
) -> tuple[Sequence[Any], str | None]:
    overdue, today = filters.pop("overdue", None), filters.pop("today", None)
    if overdue or today:
        _local_day_filters(filters, await repository.owner_timezone(session, owner_id), overdue, today)
    filters["dialect"] = session.get_bind().dialect.name
    stmt = repository.task_list_query(owner_id, after=decode_cursor(cursor), **filters)
    rows = await repository.list_task_rows(session, stmt, limit)
    return next_cursor(list(rows), limit)


def _page_body(results: bytes, cursor: str | None) -> bytes:
    return b'{"results":' + results + b',"next_cursor":' + orjson.dumps(cursor) + b"}"


async def list_tasks_json(db: Database, owner_id: int, cursor: str | None, limit: int, **filters: Any) -> bytes:
    """One page of `list_tasks` as the response body. PostgreSQL: one statement on the raw pool
    (`repository.pg_task_list`), its rows serialised by `page_json`; SQLite: the rows through a session."""
    if not db.postgres:
        async with db.sessionmaker() as session:
            rows, nxt = await list_tasks(session, owner_id, cursor, limit, **filters)
        return _page_body(orjson.dumps([task_to_dict(r) for r in rows], option=JSON_OPTIONS), nxt)
    after = decode_cursor(cursor)
    overdue, today = filters.pop("overdue", None), filters.pop("today", None)
    if overdue or today:
        row = await rawdb.fetchrow(db.engine, "SELECT timezone FROM users WHERE id = $1", owner_id)
        _local_day_filters(filters, str((row[0] if row else None) or "UTC"), overdue, today)
    sql, args = repository.pg_task_list(owner_id, after=after, limit=limit, **filters)
    return page_json(await rawdb.fetch(db.engine, sql, *args), limit)


def _due_of_row(r: Any) -> dict[str, Any] | None:
    """`models.due_payload` of a `repository.PAGE_COLUMNS` row."""
    if r[9] is None and r[10] is None:
        return None
    local = r[10]
    due: dict[str, Any] = {"datetime": local.isoformat(), "timezone": r[11]} if local else {"date": r[9].isoformat()}
    if r[12]:
        due["string"] = r[12]
    if r[13]:
        due["recurrence"] = {"rule": r[13], "mode": r[14]}
    return due


def page_json(rows: Sequence[Any], limit: int) -> bytes:
    """The list response body from up to `limit + 1` rows of `repository.PAGE_COLUMNS`: the same documents as
    `task_to_dict` (one dict per row, read by position; `labels` embedded as the JSON text stored, not decoded)."""
    page = rows[:limit]
    docs = [
        {
            "id": r[0],
            "title": r[1],
            "description": r[2],
            "project_id": r[3],
            "parent_id": r[4],
            "priority": r[5],
            "labels": orjson.Fragment(r[6]) if r[6] is not None else [],
            "position": r[7],
            "estimate_minutes": r[8],
            "due": _due_of_row(r),
            "done": r[15],
            "done_at": r[16],
            "created_at": r[17],
            "updated_at": r[18],
        }
        for r in page
    ]
    cursor = encode_cursor(page[-1][0]) if len(rows) > limit else None
    return orjson.dumps({"results": docs, "next_cursor": cursor}, option=JSON_OPTIONS)


async def get_task_json(db: Database, owner_id: int, task_id: int) -> bytes:
    """A task's API document: one statement on PostgreSQL, a session on SQLite."""
    if not db.postgres:
        async with db.sessionmaker() as session:
            task = await get_task(session, owner_id, task_id)
        return orjson.dumps(task_to_dict(task), option=JSON_OPTIONS)
    row = await rawdb.fetchrow(db.engine, repository.PG_GET_TASK, task_id, owner_id)
    if row is None:
        raise NotFound("Task not found")
    return str(row[0]).encode()


def can_create_in_one_statement(db: Database, data: TaskIn) -> bool:
    """A plain task (no project or parent to check) on PostgreSQL: `create_task_json` does it in one statement."""
    return db.postgres and data.project_id is None and data.parent_id is None


async def create_task_json(db: Database, owner_id: int, data: TaskIn, retry_after: int) -> bytes:
    """Create a plain task in one statement (`repository.PG_CREATE_TASK`: maintenance guard, sync version and
    insert in one implicit transaction) and return its API document."""
    columns = due_columns(data.due)
    values: dict[str, Any] = {
        "title": data.title,
        "description": data.description,
        "priority": data.priority,
        "labels": orjson.dumps(list(dict.fromkeys(data.labels))).decode(),
        "position": data.position,
        "estimate_minutes": data.estimate_minutes,
        **columns,
    }
    args = [owner_id, *(values[name] for name in repository.CREATE_COLUMNS), utcnow()]
    row = await rawdb.fetchrow(db.engine, repository.PG_CREATE_TASK, *args, write=True)
    if row is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    if row[0]:
        raise MaintenanceActive(retry_after)
    return str(row[1]).encode()


def can_update_in_one_statement(db: Database, data: TaskUpdate) -> bool:
    """A PATCH of plain fields on PostgreSQL (no project/parent to check, no due to move reminders)."""
    return db.postgres and data.model_fields_set <= repository.SIMPLE_UPDATE_FIELDS


def _written(row: Any, retry_after: int) -> bytes | None:
    if row is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    if row[0]:
        raise MaintenanceActive(retry_after)
    return None if row[1] is None else str(row[1]).encode()


async def update_task_json(db: Database, owner_id: int, task_id: int, data: TaskUpdate, retry_after: int) -> bytes:
    """`update_task` of plain fields in one statement (`repository.pg_update_task`); the task's API document."""
    values = {name: getattr(data, name) for name in data.model_fields_set}
    if "labels" in values:
        values["labels"] = orjson.dumps(list(dict.fromkeys(values["labels"] or []))).decode()
    sql, args = repository.pg_update_task(task_id, owner_id, values, utcnow())
    body = _written(await rawdb.fetchrow(db.engine, sql, *args, write=True), retry_after)
    if body is None:
        raise NotFound("Task not found")
    return body


async def complete_task_json(db: Database, owner_id: int, task_id: int, retry_after: int) -> bytes | None:
    """Complete an open, non-recurring task in one statement (`repository.PG_COMPLETE_TASK`) and return its API
    document; None when the task is missing, already done or recurring (`set_done` on a session answers those)."""
    if not db.postgres:
        return None
    row = await rawdb.fetchrow(db.engine, repository.PG_COMPLETE_TASK, task_id, owner_id, utcnow(), write=True)
    return _written(row, retry_after)


async def update_task(session: AsyncSession, owner_id: int, task_id: int, data: TaskUpdate) -> Task:
    task = await get_task(session, owner_id, task_id)
    fields = data.model_fields_set
    await _check_refs(
        session,
        owner_id,
        task,
        data.project_id if "project_id" in fields else None,
        data.parent_id if "parent_id" in fields else None,
    )
    for field in fields:
        if field == "due":
            _apply_due(task, data.due)
            await session.flush()
            await hooks.due_changed(session, task)
        elif field == "labels":
            task.labels = list(dict.fromkeys(data.labels or []))
        else:
            setattr(task, field, getattr(data, field))
    task.updated_at = utcnow()
    await session.commit()
    return task


async def set_done(session: AsyncSession, owner_id: int, task_id: int, done: bool) -> Task:
    """Complete or reopen. Completing logs a completion; a recurring task moves to its next occurrence instead of
    being closed (and is closed when its series has ended)."""
    task = await get_task(session, owner_id, task_id)
    now = utcnow()
    if not done:
        if task.done:
            task.done, task.done_at, task.updated_at = False, None, now
            await session.commit()
        return task
    if task.done:
        return task
    session.add(
        TaskCompletion(
            task_id=task.id,
            owner_id=owner_id,
            completed_at=now,
            due_date=task.due_date if task.due_datetime is None else None,
            due_datetime=task.due_datetime,
        )
    )
    nxt = await _next_due(session, task, owner_id, now) if task.recurrence_rule else None
    if nxt is not None:
        if task.due_datetime is not None:
            _set_due_moment(task, None, nxt, task.due_timezone)
        else:
            _set_due_moment(task, nxt.date(), None, None)
        await hooks.due_changed(session, task)
    else:
        task.done, task.done_at = True, now
    task.updated_at = now
    await session.commit()
    return task


async def _next_due(session: AsyncSession, task: Task, owner_id: int, now: datetime) -> datetime | None:
    assert task.recurrence_rule is not None
    current = task.due_datetime or (as_datetime(task.due_date) if task.due_date else None)
    if current is None:
        return None
    zone_name = task.due_timezone or await repository.owner_timezone(session, owner_id)
    completed_local = now.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None)
    mode: Mode = "from_completion" if task.recurrence_mode == "from_completion" else "from_due"
    return next_occurrence(
        parse_rule(task.recurrence_rule), task.recurrence_anchor or current, current, completed_local, mode
    )


async def list_completions(session: AsyncSession, owner_id: int, task_id: int) -> list[TaskCompletion]:
    await get_task(session, owner_id, task_id)
    return list(await repository.list_completions(session, owner_id, task_id))


async def delete_task(session: AsyncSession, owner_id: int, task_id: int) -> None:
    task = await get_task(session, owner_id, task_id)
    now = utcnow()
    task.deleted_at = now
    task.updated_at = now
    await repository.soft_delete_subtasks(session, owner_id, task_id, now)
    await session.flush()
    await hooks.deleted(session, owner_id)
    await session.commit()
