"""Projects and tasks: validation across rows, soft deletes, completion."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.core.database import utcnow
from timetodo.core.errors import InvalidInput, NotFound
from timetodo.core.pagination import decode_cursor, next_cursor
from timetodo.tasks import repository
from timetodo.tasks.models import Project, Task
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
    await session.commit()


# Tasks --------------------------------------------------------------------------------------------------------


def _apply_due(task: Task, due: Due | None) -> None:
    if due is None:
        task.due_date = task.due_datetime = task.due_timezone = task.due_string = task.due_utc = None
        return
    task.due_date = due.date
    task.due_datetime = due.datetime
    task.due_timezone = due.timezone if due.datetime is not None else None
    task.due_string = due.string
    task.due_utc = None
    if due.date is not None:
        task.due_date = due.date
    elif due.datetime is not None:
        task.due_date = due.datetime.date()
        if due.timezone is not None:
            task.due_utc = due.datetime.replace(tzinfo=ZoneInfo(due.timezone)).astimezone(UTC)


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


async def list_tasks(
    session: AsyncSession, owner_id: int, cursor: str | None, limit: int, **filters: Any
) -> tuple[Sequence[Any], str | None]:
    stmt = repository.task_list_query(owner_id, after=decode_cursor(cursor), **filters)
    rows = await repository.list_task_rows(session, stmt, limit)
    return next_cursor(list(rows), limit)


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
        elif field == "labels":
            task.labels = list(dict.fromkeys(data.labels or []))
        else:
            setattr(task, field, getattr(data, field))
    task.updated_at = utcnow()
    await session.commit()
    return task


async def set_done(session: AsyncSession, owner_id: int, task_id: int, done: bool) -> Task:
    task = await get_task(session, owner_id, task_id)
    if task.done != done:
        task.done = done
        task.done_at = utcnow() if done else None
        task.updated_at = utcnow()
        await session.commit()
    return task


async def delete_task(session: AsyncSession, owner_id: int, task_id: int) -> None:
    task = await get_task(session, owner_id, task_id)
    now = utcnow()
    task.deleted_at = now
    task.updated_at = now
    await repository.soft_delete_subtasks(session, owner_id, task_id, now)
    await session.commit()
