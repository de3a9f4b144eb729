"""All queries of projects and tasks. Every query is scoped to the owner; deleted rows are invisible.

The `pg_*` functions are the one-round-trip PostgreSQL paths of the hot endpoints (`timetodo.core.rawdb`). A single
task's document is built by the database (`TASK_JSON`, the same document as `task_to_dict` + orjson); a list page
comes as plain rows (`PAGE_COLUMNS`) that the app serialises with orjson — for 50 rows that costs the app and the
database together half the CPU of the database building the JSON. Either way the `labels` column is passed through
as JSON text, never decoded."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Row, Select, and_, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth.models import User
from timetodo.core.tracking import next_version
from timetodo.tasks.models import Project, Task, TaskCompletion


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
    label: str | None = None,
    due_before: date | None = None,
    due_after: date | None = None,
    overdue_at: tuple[datetime, date, datetime] | None = None,
    today: tuple[date, datetime, datetime] | None = None,
    dialect: str = "postgresql",
) -> Select[Any]:
    """`overdue_at` = (now UTC, today's local date, now as local wall clock); `today` = (local date, its start and
    end as UTC instants)."""
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
    if label is not None:
        if dialect == "sqlite":
            stmt = stmt.where(text("EXISTS (SELECT 1 FROM json_each(tasks.labels) WHERE json_each.value = :label)"))
        else:
            stmt = stmt.where(text("(tasks.labels)::jsonb ? :label"))
        stmt = stmt.params(label=label)
    if due_before is not None:
        stmt = stmt.where(Task.due_date <= due_before)
    if due_after is not None:
        stmt = stmt.where(Task.due_date >= due_after)
    if overdue_at is not None:
        now, local_today, local_now = overdue_at
        stmt = stmt.where(
            Task.done.is_(False),
            or_(
                and_(Task.due_utc.is_not(None), Task.due_utc < now),
                and_(Task.due_utc.is_(None), Task.due_datetime.is_not(None), Task.due_datetime < local_now),
                and_(Task.due_utc.is_(None), Task.due_datetime.is_(None), Task.due_date < local_today),
            ),
        )
    if today is not None:
        local_today, start, end = today
        stmt = stmt.where(
            or_(
                and_(Task.due_utc.is_not(None), Task.due_utc >= start, Task.due_utc < end),
                and_(Task.due_utc.is_(None), Task.due_date == local_today),
            )
        )
    if after is not None:
        stmt = stmt.where(Task.id > after)
    return stmt.order_by(Task.id)


async def list_task_rows(session: AsyncSession, stmt: Select[Any], limit: int) -> Sequence[Row[Any]]:
    """Plain rows (no ORM instances): the list endpoint serialises them directly. Executed on the session's Core
    connection: the ORM execution layer costs more than the query here."""
    connection = await session.connection()
    result = await connection.execute(stmt.limit(limit + 1))
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
        .values(deleted_at=now, updated_at=now, sync_version=await next_version(session, owner_id))
    )


async def soft_delete_subtasks(session: AsyncSession, owner_id: int, parent_id: int, now: datetime) -> None:
    await session.execute(
        update(Task)
        .where(Task.owner_id == owner_id, Task.parent_id == parent_id, Task.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now, sync_version=await next_version(session, owner_id))
    )


async def owner_timezone(session: AsyncSession, owner_id: int) -> str:
    result = await session.execute(select(User.timezone).where(User.id == owner_id))
    return str(result.scalar_one_or_none() or "UTC")


async def list_completions(session: AsyncSession, owner_id: int, task_id: int) -> Sequence[TaskCompletion]:
    result = await session.execute(
        select(TaskCompletion)
        .where(TaskCompletion.owner_id == owner_id, TaskCompletion.task_id == task_id)
        .order_by(TaskCompletion.id)
    )
    return result.scalars().all()


# PostgreSQL one-round-trip paths ---------------------------------------------------------------------------------


def _iso(column: str, utc: bool) -> str:
    """`datetime.isoformat()` / orjson's format in SQL: microseconds only when there are any; `Z` for UTC."""
    local = f"({column} AT TIME ZONE 'UTC')" if utc else column
    return (
        f"to_char({local}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN date_trunc('second', {column}) = {column} "
        f"THEN '' ELSE to_char({local}, '.US') END" + (" || 'Z'" if utc else "")
    )


def _due_json(t: str) -> str:
    return (
        f"CASE WHEN {t}.due_date IS NULL AND {t}.due_datetime IS NULL THEN NULL ELSE ("
        f"'{{' || CASE WHEN {t}.due_datetime IS NOT NULL "
        f"THEN '\"datetime\":' || to_json({_iso(f'{t}.due_datetime', False)})::text "
        f"|| ',\"timezone\":' || coalesce(to_json({t}.due_timezone)::text, 'null') "
        f"ELSE '\"date\":\"' || to_char({t}.due_date, 'YYYY-MM-DD') || '\"' END "
        f"|| CASE WHEN {t}.due_string <> '' THEN ',\"string\":' || to_json({t}.due_string)::text ELSE '' END "
        f"|| CASE WHEN {t}.recurrence_rule <> '' THEN ',\"recurrence\":' "
        f"|| json_build_object('rule', {t}.recurrence_rule, 'mode', {t}.recurrence_mode)::text ELSE '' END "
        f"|| '}}')::json END"
    )


def _utc_or_null(column: str) -> str:
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE {_iso(column, True)} END"


def task_json(t: str = "tasks") -> str:
    """SQL building a task's API document (`task_to_dict`) from the row aliased `t`."""
    return (
        f"json_build_object('id', {t}.id, 'title', {t}.title, 'description', {t}.description, "
        f"'project_id', {t}.project_id, 'parent_id', {t}.parent_id, 'priority', {t}.priority, "
        f"'labels', coalesce({t}.labels, '[]'::json), 'position', {t}.position, "
        f"'estimate_minutes', {t}.estimate_minutes, 'due', {_due_json(t)}, 'done', {t}.done, "
        f"'done_at', {_utc_or_null(f'{t}.done_at')}, 'created_at', {_iso(f'{t}.created_at', True)}, "
        f"'updated_at', {_iso(f'{t}.updated_at', True)})"
    )


TASK_JSON = task_json()


def pg_task_list(
    owner_id: int,
    *,
    after: int | None,
    limit: int,
    project_id: int | None = None,
    done: bool | None = None,
    q: str | None = None,
    parent_id: int | None = None,
    label: str | None = None,
    due_before: date | None = None,
    due_after: date | None = None,
    overdue_at: tuple[datetime, date, datetime] | None = None,
    today: tuple[date, datetime, datetime] | None = None,
) -> tuple[str, list[Any]]:
    """The statement (and its arguments) answering one page of `task_list_query`: up to `limit + 1` rows of
    `PAGE_COLUMNS` (the extra row says there is a next page). Same filters, same order. Plain rows, serialised by
    the app (`service.page_json`): PostgreSQL building the page's JSON cost twice the CPU of the app and the
    database together with plain rows (bench/RESULTS.md, issue 14)."""
    args: list[Any] = [owner_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = ["tasks.owner_id = $1", "tasks.deleted_at IS NULL"]
    if project_id is not None:
        where.append(f"tasks.project_id = {arg(project_id)}")
    if done is not None:
        where.append(f"tasks.done IS {'true' if done else 'false'}")
    if parent_id is not None:
        where.append(f"tasks.parent_id = {arg(parent_id)}")
    if q:
        pattern = arg(f"%{_escape_like(q)}%")
        where.append(f"(tasks.title ILIKE {pattern} ESCAPE '\\' OR tasks.description ILIKE {pattern} ESCAPE '\\')")
    if label is not None:
        where.append(f"(tasks.labels)::jsonb ? {arg(label)}")
    if due_before is not None:
        where.append(f"tasks.due_date <= {arg(due_before)}")
    if due_after is not None:
        where.append(f"tasks.due_date >= {arg(due_after)}")
    if overdue_at is not None:
        now, local_today, local_now = overdue_at
        where.append(
            f"tasks.done IS false AND ((tasks.due_utc IS NOT NULL AND tasks.due_utc < {arg(now)}) "
            f"OR (tasks.due_utc IS NULL AND tasks.due_datetime IS NOT NULL AND tasks.due_datetime < {arg(local_now)}) "
            f"OR (tasks.due_utc IS NULL AND tasks.due_datetime IS NULL AND tasks.due_date < {arg(local_today)}))"
        )
    if today is not None:
        local_today, start, end = today
        where.append(
            f"((tasks.due_utc IS NOT NULL AND tasks.due_utc >= {arg(start)} AND tasks.due_utc < {arg(end)}) "
            f"OR (tasks.due_utc IS NULL AND tasks.due_date = {arg(local_today)}))"
        )
    if after is not None:
        where.append(f"tasks.id > {arg(after)}")
    n = arg(limit)
    # only constants and $n placeholders are interpolated: every value is an argument
    sql = f"SELECT {PAGE_SELECT} FROM tasks WHERE {' AND '.join(where)} ORDER BY tasks.id LIMIT {n}::int + 1"  # noqa: S608
    return sql, args


# the columns of a list page's rows, in order (`service.page_json` reads them by position); `labels` as its JSON text
PAGE_COLUMNS = (
    "id",
    "title",
    "description",
    "project_id",
    "parent_id",
    "priority",
    "labels",
    "position",
    "estimate_minutes",
    "due_date",
    "due_datetime",
    "due_timezone",
    "due_string",
    "recurrence_rule",
    "recurrence_mode",
    "done",
    "done_at",
    "created_at",
    "updated_at",
)
PAGE_SELECT = ", ".join(f"tasks.{c}::text" if c == "labels" else f"tasks.{c}" for c in PAGE_COLUMNS)


PG_GET_TASK = (
    f"SELECT {TASK_JSON}::text FROM tasks "  # noqa: S608 (constants only)
    "WHERE tasks.id = $1 AND tasks.owner_id = $2 AND tasks.deleted_at IS NULL"
)

# the columns a plain create sets, in the order of PG_CREATE_TASK's arguments $2…; $1 is the owner, the last one now
CREATE_COLUMNS = (
    "title",
    "description",
    "priority",
    "labels",
    "position",
    "estimate_minutes",
    "due_date",
    "due_datetime",
    "due_timezone",
    "due_string",
    "due_utc",
    "recurrence_rule",
    "recurrence_mode",
    "recurrence_anchor",
)
_NOW = f"${len(CREATE_COLUMNS) + 2}"
_CREATE_VALUES = ", ".join(f"${i + 2}" for i in range(len(CREATE_COLUMNS)))
# One statement = one implicit transaction: the maintenance guard (the share lock on app_state's row, held until the
# statement commits; `set_maintenance` waits for it), the sync version (timetodo.core.tracking) and the insert. The
# insert runs only when maintenance is off; the answer says which: (maintenance_enabled, the task's JSON or NULL).
PG_CREATE_TASK = (
    "WITH guard AS (SELECT maintenance_enabled AS m FROM app_state WHERE id = 1 FOR SHARE), "  # noqa: S608
    f"ins AS (INSERT INTO tasks (owner_id, {', '.join(CREATE_COLUMNS)}, done, created_at, updated_at, sync_version) "
    f"SELECT $1, {_CREATE_VALUES}, false, {_NOW}, {_NOW}, ttd_sync_next_version($1) FROM guard WHERE NOT guard.m "
    f"RETURNING {TASK_JSON}::text AS j) "
    "SELECT guard.m, (SELECT ins.j FROM ins) FROM guard"
)


# the fields a PATCH can change in one statement (the others need checks or hooks: project/parent refs, due →
# reminders); `pg_update_task` sets them, the update time and a new sync version
SIMPLE_UPDATE_FIELDS = frozenset({"title", "description", "priority", "labels", "position", "estimate_minutes"})
_GUARD = "guard AS (SELECT maintenance_enabled AS m FROM app_state WHERE id = 1 FOR SHARE)"
_MINE = "NOT guard.m AND tasks.id = $1 AND tasks.owner_id = $2 AND tasks.deleted_at IS NULL"


def pg_update_task(task_id: int, owner_id: int, values: dict[str, Any], now: datetime) -> tuple[str, list[Any]]:
    """One statement (one implicit transaction, as `PG_CREATE_TASK`): the maintenance guard, the update of the
    owner's live task and its sync version. Answers (maintenance_enabled, the task's JSON or NULL when there is no
    such task)."""
    unknown = set(values) - SIMPLE_UPDATE_FIELDS
    if unknown:
        raise ValueError(f"not a one-statement update: {sorted(unknown)}")
    args: list[Any] = [task_id, owner_id, now]
    sets = ["updated_at = $3", "sync_version = ttd_sync_next_version($2)"]
    for name in sorted(values):
        args.append(values[name])
        sets.append(f"{name} = ${len(args)}")
    sql = (
        f"WITH {_GUARD}, upd AS (UPDATE tasks SET {', '.join(sets)} FROM guard WHERE {_MINE} "  # noqa: S608
        f"RETURNING {TASK_JSON}::text AS j) SELECT guard.m, (SELECT upd.j FROM upd) FROM guard"
    )
    return sql, args


# Completing a task that is open and not recurring, in one statement: the guard, the task closed with a new sync
# version, its completion logged. Arguments: task id, owner, now. Answers (maintenance_enabled, the task's JSON or
# NULL): NULL when the task is missing, already done or recurring — the session path decides those.
PG_COMPLETE_TASK = (
    f"WITH {_GUARD}, upd AS (UPDATE tasks SET done = true, done_at = $3, updated_at = $3, "  # noqa: S608
    f"sync_version = ttd_sync_next_version($2) FROM guard WHERE {_MINE} AND tasks.done IS false "
    "AND coalesce(tasks.recurrence_rule, '') = '' "
    f"RETURNING tasks.id, tasks.due_date, tasks.due_datetime, {TASK_JSON}::text AS j), "
    "ins AS (INSERT INTO task_completions (task_id, owner_id, completed_at, due_date, due_datetime) "
    "SELECT upd.id, $2, $3, CASE WHEN upd.due_datetime IS NULL THEN upd.due_date END, upd.due_datetime FROM upd) "
    "SELECT guard.m, (SELECT upd.j FROM upd) FROM guard"
)
