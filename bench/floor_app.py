"""The floor: the least code any Python ASGI app needs to do the database work of our two hot endpoints, on the
same stack as `timetodo serve` (uvicorn + uvloop + httptools, a listening socket per worker, asyncpg).
`python -m bench.floor_app PORT WORKERS DSN` (DSN: `postgresql://…` of a database migrated by `timetodo db upgrade`).

- `GET /floor-list` with header `X-User: <user id>`: the statement our list endpoint runs for a first page of 50
  (`timetodo.tasks.repository.pg_task_list`, the same SQL text), its rows serialised with orjson into the same
  document as ours (`timetodo.tasks.service.page_json`, repeated here without its imports; the benchmark checks the
  bytes are equal to our endpoint's answer).
- `POST /floor-create` with header `X-User` and a JSON body (`title`, `description`, `priority`, `labels`,
  `position`, `estimate_minutes`): one INSERT of the columns our create writes (`repository.CREATE_COLUMNS`, due
  and recurrence left NULL), RETURNING the task's document built by PostgreSQL as ours does (`repository.TASK_JSON`);
  201 with that JSON.

What it leaves out, by design: authentication, middleware (access log, metrics, idempotency), the maintenance guard,
the sync version (the column keeps its default), input validation, error envelopes. Each worker has its own asyncpg
pool (up to `FLOOR_POOL_SIZE`, default 20 = `DATABASE_POOL_SIZE`; no reset query on release, as `timetodo.core.rawdb`).
The SQL reaches the workers in the environment (`FLOOR_LIST_SQL`, `FLOOR_CREATE_SQL`, `FLOOR_CREATE_COLUMNS`), set
by the parent from `timetodo.tasks.repository`, so a worker imports nothing of the app: no SQLAlchemy, FastAPI or
pydantic objects for the garbage collector to walk.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

LIMIT = 50
OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC  # timetodo.core.responses.JSON_OPTIONS


class _State:
    pool: asyncpg.Pool
    list_sql: str
    create_sql: str
    create_columns: list[str]


state = _State()


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """No session state to reset: asyncpg's default reset costs a round trip per statement."""


def _due(r: Any) -> dict[str, Any] | None:
    if r[9] is None and r[10] is None:
        return None
    local = r[10]
    due: dict[str, Any] = {"datetime": local.isoformat(), "timezone": r[11]} if local else {"date": r[9].isoformat()}
    if r[12]:
        due["string"] = r[12]
    if r[13]:
        due["recurrence"] = {"rule": r[13], "mode": r[14]}
    return due


def _cursor(last_id: int) -> str:  # timetodo.core.pagination.encode_cursor
    return base64.urlsafe_b64encode(orjson.dumps({"after": last_id})).decode().rstrip("=")


async def floor_list(request: Request) -> Response:
    rows = await state.pool.fetch(state.list_sql, int(request.headers["x-user"]), LIMIT)
    page = rows[:LIMIT]
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
            "due": _due(r),
            "done": r[15],
            "done_at": r[16],
            "created_at": r[17],
            "updated_at": r[18],
        }
        for r in page
    ]
    cursor = _cursor(page[-1][0]) if len(rows) > LIMIT else None
    return Response(
        orjson.dumps({"results": docs, "next_cursor": cursor}, option=OPTIONS), media_type="application/json"
    )


async def floor_create(request: Request) -> Response:
    data = orjson.loads(await request.body())
    values = {
        "title": data["title"],
        "description": data.get("description", ""),
        "priority": data.get("priority", 0),
        "labels": orjson.dumps(data.get("labels", [])).decode(),
        "position": data.get("position", 0),
        "estimate_minutes": data.get("estimate_minutes"),
    }
    args = [values.get(name) for name in state.create_columns]
    row = await state.pool.fetchrow(state.create_sql, int(request.headers["x-user"]), *args, datetime.now(UTC))
    return Response(row[0].encode(), status_code=201, media_type="application/json")


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    state.list_sql = os.environ["FLOOR_LIST_SQL"]
    state.create_sql = os.environ["FLOOR_CREATE_SQL"]
    state.create_columns = os.environ["FLOOR_CREATE_COLUMNS"].split(",")
    size = int(os.environ.get("FLOOR_POOL_SIZE", "20"))
    state.pool = await asyncpg.create_pool(
        os.environ["FLOOR_DSN"], min_size=1, max_size=size, max_inactive_connection_lifetime=0, reset=_no_reset
    )
    try:
        yield
    finally:
        await state.pool.close()


app = Starlette(
    routes=[Route("/floor-list", floor_list), Route("/floor-create", floor_create, methods=["POST"])], lifespan=lifespan
)


def statements() -> dict[str, str]:
    """The environment a worker reads its SQL from, built from the app's repository (imported here, in the parent)."""
    from timetodo.tasks import repository

    list_sql, list_args = repository.pg_task_list(0, after=None, limit=LIMIT)
    if len(list_args) != 2:  # owner, limit: what `floor_list` sends
        raise RuntimeError(f"pg_task_list's arguments changed: {list_args}")
    columns = repository.CREATE_COLUMNS
    placeholders = ", ".join(f"${i + 2}" for i in range(len(columns)))
    now = f"${len(columns) + 2}"
    create_sql = (
        f"INSERT INTO tasks (owner_id, {', '.join(columns)}, done, created_at, updated_at) "
        f"VALUES ($1, {placeholders}, false, {now}, {now}) RETURNING {repository.TASK_JSON}::text"
    )
    return {"FLOOR_LIST_SQL": list_sql, "FLOOR_CREATE_SQL": create_sql, "FLOOR_CREATE_COLUMNS": ",".join(columns)}


if __name__ == "__main__":
    import sys

    from bench.bare_app import serve

    port, workers, dsn = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.environ.update(statements(), FLOOR_DSN=dsn)  # the spawned workers inherit it
    serve("bench.floor_app:app", port, workers)
