from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from timetodo.core.database import Database
from timetodo.core.deps import (
    API_PREFIX,
    EventsDep,
    IdPath,
    SessionDep,
    UserIdDep,
    WriteSessionDep,
    user_id_of,
    write_session,
)
from timetodo.core.events import EventHub
from timetodo.core.fastpath import FastPathRoute, fast_path
from timetodo.core.idempotency import claim_of
from timetodo.core.pagination import CURSOR_MAX_LENGTH, LIMIT_MAX, CursorQuery, LimitQuery, Page
from timetodo.core.responses import json_response
from timetodo.core.validators import MAX_ID
from timetodo.tasks import service
from timetodo.tasks.models import Task, task_to_dict
from timetodo.tasks.schemas import (
    CompletionOut,
    ProjectIn,
    ProjectOut,
    ProjectUpdate,
    TaskFilters,
    TaskIn,
    TaskOut,
    TaskUpdate,
    query_parameters,
)

# task routes first: FastAPI tries routes in order, tasks are the busiest; the hottest endpoints have a fast path
# in front of FastAPI's dependency solving (`timetodo.core.fastpath`: anything unusual takes the ordinary path)
router = APIRouter(prefix=API_PREFIX, route_class=FastPathRoute)


def task_out(task: Task) -> TaskOut:
    return TaskOut.model_validate(task_to_dict(task))


_FILTERS = frozenset(TaskFilters.model_fields)


# the hot endpoints take the app's Database and EventHub from the app state rather than as dependencies: FastAPI
# resolves each dependency on every request (≈ 10 µs each)
def _db(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


def _events(request: Request) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


def task_filters(request: Request) -> dict[str, Any]:
    """The filters sent in the query string, validated as `TaskFilters` (422 in the usual envelope); none sent:
    nothing to validate (FastAPI would validate each of the nine declared parameters on every request)."""
    query = request.query_params
    if not any(name in _FILTERS for name in query):
        return {}
    try:
        filters = TaskFilters.model_validate({name: query[name] for name in query if name in _FILTERS})
    except ValidationError as exc:
        errors = [{**err, "loc": ("query", *err["loc"])} for err in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None
    return filters.model_dump()


_LIST_PARAMETERS = frozenset({"limit", "cursor"})


async def _list_fast(request: Request) -> Response | None:
    """`list_tasks` for a query of at most `limit` (plain digits in range) and `cursor` (filters: the endpoint
    validates them itself); anything else takes FastAPI's path."""
    query = request.query_params
    limit, cursor = 50, None
    if query:
        if len(query) != len(query.multi_items()) or not _LIST_PARAMETERS.issuperset(query):
            return None
        raw = query.get("limit")
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= LIMIT_MAX):
                return None
            limit = int(raw)
        cursor = query.get("cursor")
        if cursor is not None and len(cursor) > CURSOR_MAX_LENGTH:
            return None
    return await list_tasks(request, await user_id_of(request), limit, cursor)


def _json_body_type(request: Request) -> bool:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower() == "application/json"


async def _body(request: Request) -> bytes:
    """The body, failing as FastAPI's own reading does (an HTTPException as is, anything else a 400)."""
    try:
        return await request.body()
    except StarletteHTTPException:  # FastAPI re-raises Starlette's (the body limit's 413 is one), as here
        raise
    except Exception as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


async def _create_fast(request: Request) -> Response | None:
    """`create_task` for a JSON body that is a valid `TaskIn` (decoded by orjson: whatever orjson refuses takes
    FastAPI's path, which answers the errors)."""
    if not _json_body_type(request):
        return None
    try:
        data = TaskIn.model_validate(orjson.loads(await _body(request)))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return await create_task(request, data, await user_id_of(request))


async def _get_fast(request: Request) -> Response | None:
    raw = request.path_params.get("task_id")
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_ID):
        return None
    return await get_task(request, int(raw), await user_id_of(request))


@router.get(
    "/tasks",
    response_model=Page[TaskOut],
    tags=["tasks"],
    openapi_extra={"parameters": query_parameters(TaskFilters)},
)
@fast_path(_list_fast)
async def list_tasks(
    request: Request, user_id: UserIdDep, limit: LimitQuery = 50, cursor: CursorQuery = None
) -> Response:
    """Filters combine (AND) and work with cursor pagination."""
    body = await service.list_tasks_json(_db(request), user_id, cursor, limit, **task_filters(request))
    return Response(body, media_type="application/json")


@router.post("/tasks", status_code=status.HTTP_201_CREATED, response_model=TaskOut, tags=["tasks"])
@fast_path(_create_fast)
async def create_task(request: Request, data: TaskIn, user_id: UserIdDep) -> Response:
    db, events = _db(request), _events(request)
    if claim_of(request) is None and service.can_create_in_one_statement(db, data):
        body = await service.create_task_json(db, user_id, data, request.app.state.settings.MAINTENANCE_RETRY_AFTER)
        await events.publish(user_id, "task.created", orjson.Fragment(body))
        return Response(body, status_code=status.HTTP_201_CREATED, media_type="application/json")
    async with write_session(request) as session:
        out = task_out(await service.create_task(session, user_id, data)).model_dump(mode="json")
    await events.publish(user_id, "task.created", out)
    return json_response(out, status_code=status.HTTP_201_CREATED)


@router.get("/tasks/{task_id}", response_model=TaskOut, tags=["tasks"])
@fast_path(_get_fast)
async def get_task(request: Request, task_id: IdPath, user_id: UserIdDep) -> Response:
    return Response(await service.get_task_json(_db(request), user_id, task_id), media_type="application/json")


@router.patch("/tasks/{task_id}", response_model=TaskOut, tags=["tasks"])
async def update_task(request: Request, task_id: IdPath, data: TaskUpdate, user_id: UserIdDep) -> Response:
    db, events = _db(request), _events(request)
    if claim_of(request) is None and service.can_update_in_one_statement(db, data):
        retry_after = request.app.state.settings.MAINTENANCE_RETRY_AFTER
        body = await service.update_task_json(db, user_id, task_id, data, retry_after)
        await events.publish(user_id, "task.updated", orjson.Fragment(body))
        return Response(body, media_type="application/json")
    async with write_session(request) as session:
        out = task_out(await service.update_task(session, user_id, task_id, data)).model_dump(mode="json")
    await events.publish(user_id, "task.updated", out)
    return json_response(out)


@router.post("/tasks/{task_id}/complete", response_model=TaskOut, tags=["tasks"])
async def complete_task(request: Request, task_id: IdPath, user_id: UserIdDep) -> Response:
    db, events = _db(request), _events(request)
    if claim_of(request) is None:
        retry_after = request.app.state.settings.MAINTENANCE_RETRY_AFTER
        body = await service.complete_task_json(db, user_id, task_id, retry_after)
        if body is not None:
            await events.publish(user_id, "task.completed", orjson.Fragment(body))
            return Response(body, media_type="application/json")
    async with write_session(request) as session:
        out = task_out(await service.set_done(session, user_id, task_id, True)).model_dump(mode="json")
    await events.publish(user_id, "task.completed", out)
    return json_response(out)


@router.post("/tasks/{task_id}/reopen", response_model=TaskOut, tags=["tasks"])
async def reopen_task(task_id: IdPath, user_id: UserIdDep, session: WriteSessionDep, events: EventsDep) -> TaskOut:
    out = task_out(await service.set_done(session, user_id, task_id, False))
    await events.publish(user_id, "task.updated", out.model_dump(mode="json"))
    return out


@router.delete("/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["tasks"])
async def delete_task(task_id: IdPath, user_id: UserIdDep, session: WriteSessionDep, events: EventsDep) -> Response:
    """Soft-delete the task and its subtasks (kept as tombstones for sync)."""
    await service.delete_task(session, user_id, task_id)
    await events.publish(user_id, "task.deleted", {"id": task_id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/tasks/{task_id}/completions", response_model=list[CompletionOut], tags=["tasks"])
async def list_completions(task_id: IdPath, user_id: UserIdDep, session: SessionDep) -> list[CompletionOut]:
    """Every completion of the task, oldest first (a recurring task has one per completed occurrence)."""
    return [CompletionOut.model_validate(c) for c in await service.list_completions(session, user_id, task_id)]


@router.get("/projects", response_model=Page[ProjectOut], tags=["projects"])
async def list_projects(
    user_id: UserIdDep,
    session: SessionDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    archived: bool | None = None,
) -> Page[ProjectOut]:
    rows, nxt = await service.list_projects(session, user_id, cursor, limit, archived)
    return Page[ProjectOut](results=[ProjectOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectOut, tags=["projects"])
async def create_project(data: ProjectIn, user_id: UserIdDep, session: WriteSessionDep) -> object:
    return await service.create_project(session, user_id, data)


@router.get("/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
async def get_project(project_id: IdPath, user_id: UserIdDep, session: SessionDep) -> object:
    return await service.get_project(session, user_id, project_id)


@router.patch("/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
async def update_project(
    project_id: IdPath, data: ProjectUpdate, user_id: UserIdDep, session: WriteSessionDep
) -> object:
    return await service.update_project(session, user_id, project_id, data)


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["projects"])
async def delete_project(project_id: IdPath, user_id: UserIdDep, session: WriteSessionDep) -> Response:
    """Soft-delete the project and its tasks."""
    await service.delete_project(session, user_id, project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
