"""The one-statement PostgreSQL paths of the hot endpoints (list/get/create of tasks): one round trip each, the same
documents as the session path (a task built by the database, a list page serialised from plain rows), and no error
when the pooled connection was killed by the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text

from tests.conftest import asgi_client, backend_settings, running_app
from tests.support import Services, new_user
from timetodo.core import rawdb
from timetodo.core.database import Database, create_engine
from timetodo.tasks import service
from timetodo.tasks.models import task_to_dict


@pytest.fixture
async def pg_app(services: Services, tmp_path: Path) -> AsyncIterator[FastAPI]:
    # the maintenance flag cached as in production (the tests' default of 0 s reads it on every write); the reminder
    # scheduler's poll (a transaction on the sessions' pool every second) out of the way of the round-trip count
    settings = await backend_settings(
        "postgres", tmp_path, lambda: services, MAINTENANCE_CACHE_SECONDS=60, REMINDER_POLL_SECONDS=300
    )
    async with running_app(settings) as app:
        yield app


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_list_get_create_are_one_round_trip_each(pg_app: FastAPI) -> None:
    """One statement on the raw pool, nothing through SQLAlchemy's pool (no BEGIN / ROLLBACK / COMMIT / ping)."""
    session_queries: list[str] = []

    def log(record: Any) -> None:
        session_queries.append(record.query)

    def watch(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(log)

    engine = pg_app.state.engine
    event.listen(engine.sync_engine, "checkout", watch)
    try:
        async with asgi_client(pg_app) as client:
            headers, _ = await new_user(client)
            created = await client.post("/api/v1/tasks", json={"title": "warm-up"}, headers=headers)
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200
            for method, path, body in (
                ("GET", "/api/v1/tasks?limit=50", None),
                ("GET", f"/api/v1/tasks/{task_id}", None),
                ("POST", "/api/v1/tasks", {"title": "t", "labels": ["a"], "due": {"date": "2030-01-02"}}),
                ("PATCH", f"/api/v1/tasks/{task_id}", {"title": "renamed", "labels": ["b"], "priority": 1}),
                ("POST", f"/api/v1/tasks/{task_id}/complete", None),
            ):
                session_queries.clear()
                raw: list[str] = []
                with rawdb.statements_sent(raw):
                    resp = await client.request(method, path, json=body, headers=headers)
                assert resp.status_code in (200, 201), resp.text
                assert len(raw) == 1 and session_queries == [], (path, raw, session_queries)
                assert not raw[0].lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))
    finally:
        event.remove(engine.sync_engine, "checkout", watch)


async def _session_page(db: Database, owner: int, cursor: str | None, limit: int, **filters: Any) -> Any:
    async with db.sessionmaker() as session:
        rows, nxt = await service.list_tasks(session, owner, cursor, limit, **filters)
    return orjson.loads(
        orjson.dumps(
            {"results": [task_to_dict(r) for r in rows], "next_cursor": nxt},
            option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC,
        )
    )


async def test_database_built_json_is_the_session_paths_document(pg_app: FastAPI) -> None:
    db = Database(pg_app.state.engine, pg_app.state.sessionmaker)
    today = date.today()
    async with asgi_client(pg_app) as client:
        headers, tokens = await new_user(client, timezone="Asia/Kathmandu")
        owner = int(tokens["user"]["id"])
        project = (await client.post("/api/v1/projects", json={"name": "p"}, headers=headers)).json()["id"]
        bodies: list[dict[str, Any]] = [
            {"title": "plain"},
            {"title": 'quotes " \\ and ünïcødé ✓', "description": "line\nbreak\t<tab>", "labels": ["a", "b", "a"]},
            {"title": "date", "due": {"date": str(today - timedelta(days=1))}, "estimate_minutes": 30},
            {"title": "zoned", "due": {"datetime": f"{today}T10:30:00", "timezone": "Europe/Berlin"}},
            {"title": "floating", "due": {"datetime": f"{today}T23:59:59.250000"}, "priority": 1},
            {
                "title": "recurring",
                "due": {"date": str(today), "string": "every day", "recurrence": {"rule": "FREQ=DAILY"}},
            },
            {"title": "in project", "project_id": project, "labels": ["x"], "position": -5},
        ]
        ids = []
        for body in bodies:
            resp = await client.post("/api/v1/tasks", json=body, headers=headers)
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        sub = await client.post("/api/v1/tasks", json={"title": "sub", "parent_id": ids[0]}, headers=headers)
        ids.append(sub.json()["id"])
        assert (await client.post(f"/api/v1/tasks/{ids[1]}/complete", headers=headers)).status_code == 200
        # whole seconds print without a fraction (as orjson does)
        async with db.engine.begin() as conn:
            await conn.execute(
                text("UPDATE tasks SET created_at = date_trunc('second', created_at) WHERE id = :id"), {"id": ids[0]}
            )

        for task_id in ids:
            got = orjson.loads(await service.get_task_json(db, owner, task_id))
            async with db.sessionmaker() as session:
                want = orjson.loads(
                    orjson.dumps(
                        task_to_dict(await service.get_task(session, owner, task_id)),
                        option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC,
                    )
                )
            assert got == want
            assert (await client.get(f"/api/v1/tasks/{task_id}", headers=headers)).json() == want

        combos: list[dict[str, Any]] = [
            {},
            {"done": True},
            {"done": False},
            {"label": "a"},
            {"q": "ünï"},
            {"q": "%"},
            {"project_id": project},
            {"parent_id": ids[0]},
            {"due_before": today},
            {"due_after": today},
            {"overdue": True},
            {"today": True},
        ]
        for filters in combos:
            for limit in (2, 50):
                cursor = None
                while True:
                    want = await _session_page(db, owner, cursor, limit, **dict(filters))
                    got = orjson.loads(await service.list_tasks_json(db, owner, cursor, limit, **dict(filters)))
                    assert got == want, filters
                    if not (cursor := want["next_cursor"]):
                        break
        assert (await _session_page(db, owner, None, 50, overdue=True))["results"], "the combos cover a hit"


async def test_reads_survive_a_killed_pooled_connection_and_writes_never_run_twice(
    services: Services, tmp_path: Path
) -> None:
    """The server ends the pooled connection right before each statement (no time for asyncpg to notice): a read
    is answered from a fresh connection; a write runs at most once (retried only when it provably did not run)."""
    settings = await backend_settings("postgres", tmp_path, lambda: services)
    engine = create_engine(settings)
    admin = await asyncpg.connect(_plain(settings.DATABASE_URL))
    written = 0
    try:
        await admin.execute("CREATE TABLE hits (n int)")
        for n in range(10):
            pid = (await rawdb.fetchrow(engine, "SELECT pg_backend_pid()"))[0]  # type: ignore[index]
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            # the next statement goes to the same pooled connection, whose backend is gone
            row = await rawdb.fetchrow(engine, "SELECT pg_backend_pid()")
            assert row is not None and row[0] != pid
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", row[0])
            try:
                await rawdb.fetchrow(engine, "INSERT INTO hits VALUES ($1) RETURNING n", n, write=True)
                written += 1
            except asyncpg.exceptions.ConnectionDoesNotExistError:
                pass  # broke mid-exchange: not retried
        assert await admin.fetchval("SELECT count(*) FROM hits") == await admin.fetchval(
            "SELECT count(DISTINCT n) FROM hits"
        )
        assert await admin.fetchval("SELECT count(*) FROM hits") >= written
    finally:
        await admin.close()
        await rawdb.close(engine)
        await engine.dispose()


async def test_api_answers_after_the_server_killed_every_connection(pg_app: FastAPI) -> None:
    async with asgi_client(pg_app) as client:
        headers, _ = await new_user(client)
        task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)).json()
        admin = await asyncpg.connect(_plain(pg_app.state.settings.DATABASE_URL))
        try:
            for _ in range(3):
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                resp = await client.get("/api/v1/tasks", headers=headers)
                assert resp.status_code == 200 and resp.json()["results"][0]["id"] == task["id"]
                assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=headers)).status_code == 200
        finally:
            await admin.close()


async def test_create_in_maintenance_is_refused_and_writes_nothing(pg_app: FastAPI) -> None:
    """The one-statement create checks the flag itself (the early check of the middleware is a cache)."""
    db = Database(pg_app.state.engine, pg_app.state.sessionmaker)
    async with asgi_client(pg_app) as client:
        _, tokens = await new_user(client)
    owner = int(tokens["user"]["id"])
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE app_state SET maintenance_enabled = true"))
    try:
        from timetodo.core.errors import MaintenanceActive
        from timetodo.tasks.schemas import TaskIn

        with pytest.raises(MaintenanceActive):
            await service.create_task_json(db, owner, TaskIn(title="no"), 5)
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE app_state SET maintenance_enabled = false"))
    async with db.engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM tasks WHERE owner_id = :o"), {"o": owner})).scalar()
    assert count == 0


async def test_a_create_for_a_vanished_owner_is_a_409_not_a_500(pg_app: FastAPI) -> None:
    """The driver's own integrity error (no SQLAlchemy in between) gets the same 409 envelope."""
    from timetodo.tasks.schemas import TaskIn

    db = Database(pg_app.state.engine, pg_app.state.sessionmaker)
    with pytest.raises(asyncpg.exceptions.ForeignKeyViolationError) as raised:
        await service.create_task_json(db, 10**12, TaskIn(title="t"), 5)
    handler = pg_app.exception_handlers[asyncpg.exceptions.IntegrityConstraintViolationError]
    resp = await handler(None, raised.value)  # type: ignore[arg-type]
    assert resp.status_code == 409 and orjson.loads(resp.body)["error"] == "conflict"


async def test_one_statement_update_and_complete_match_the_session_path(pg_app: FastAPI) -> None:
    """PATCH of plain fields and complete of an open, non-recurring task answer the session path's documents; a
    missing task is a 404; completing a done or recurring task and a PATCH that moves the due date take the session
    path (same answers as before: a done task stays as it was, a recurring one moves to its next occurrence)."""
    async with asgi_client(pg_app) as client:
        headers, _ = await new_user(client)
        created = await client.post(
            "/api/v1/tasks", json={"title": "a", "due": {"date": "2030-01-02"}}, headers=headers
        )
        task = created.json()
        patched = await client.patch(
            f"/api/v1/tasks/{task['id']}",
            json={"title": "  b  ", "labels": ["x", "x", "y"], "estimate_minutes": None, "position": 3},
            headers=headers,
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["title"] == "b" and body["labels"] == ["x", "y"] and body["position"] == 3
        assert body["due"] == {"date": "2030-01-02"} and body["updated_at"] >= task["updated_at"]
        fetched = await client.get(f"/api/v1/tasks/{task['id']}", headers=headers)
        assert fetched.json() == body
        done = await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=headers)
        assert done.status_code == 200 and done.json()["done"] is True and done.json()["done_at"] is not None
        assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=headers)).json() == done.json()
        again = await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=headers)
        assert again.json() == done.json()  # already done: unchanged, no second completion
        completions = (await client.get(f"/api/v1/tasks/{task['id']}/completions", headers=headers)).json()
        assert [c["due_date"] for c in completions] == ["2030-01-02"]

        recurring = await client.post(
            "/api/v1/tasks",
            json={"title": "r", "due": {"date": "2030-01-02", "recurrence": {"rule": "FREQ=DAILY"}}},
            headers=headers,
        )
        moved = await client.post(f"/api/v1/tasks/{recurring.json()['id']}/complete", headers=headers)
        assert moved.json()["done"] is False and moved.json()["due"]["date"] == "2030-01-03"

        for method, path, body in (
            ("PATCH", "/api/v1/tasks/999999999", {"title": "x"}),
            ("POST", "/api/v1/tasks/999999999/complete", None),
        ):
            resp = await client.request(method, path, json=body, headers=headers)
            assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text
        other_headers, _ = await new_user(client)
        resp = await client.patch(f"/api/v1/tasks/{task['id']}", json={"title": "mine"}, headers=other_headers)
        assert resp.status_code == 404


async def test_one_statement_update_and_complete_in_maintenance_write_nothing(pg_app: FastAPI) -> None:
    db = Database(pg_app.state.engine, pg_app.state.sessionmaker)
    async with asgi_client(pg_app) as client:
        headers, tokens = await new_user(client)
        task = (await client.post("/api/v1/tasks", json={"title": "before"}, headers=headers)).json()
    owner = int(tokens["user"]["id"])
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE app_state SET maintenance_enabled = true"))
    try:
        from timetodo.core.errors import MaintenanceActive
        from timetodo.tasks.schemas import TaskUpdate

        with pytest.raises(MaintenanceActive):
            await service.update_task_json(db, owner, task["id"], TaskUpdate(title="after"), 5)
        with pytest.raises(MaintenanceActive):
            await service.complete_task_json(db, owner, task["id"], 5)
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE app_state SET maintenance_enabled = false"))
    async with db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT title, done FROM tasks WHERE id = :i"), {"i": task["id"]})).one()
        completions = (await conn.execute(text("SELECT count(*) FROM task_completions"))).scalar()
    assert tuple(row) == ("before", False) and completions == 0


async def test_requests_in_flight_when_the_cached_flags_expire_share_one_read(pg_app: FastAPI) -> None:
    """Every request reads the maintenance flag and the forwarding setting (cached per process): when the copies
    expire, the requests in flight wait for one read of each, instead of opening a session apiece (a burst of 2 × 16
    sessions a second per worker under the benchmark's load, which set the list's p99)."""
    import asyncio

    checkouts: list[int] = []

    def count(_dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        checkouts.append(1)

    engine = pg_app.state.engine
    async with asgi_client(pg_app) as client:
        headers, _ = await new_user(client)
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200  # warm: pools open
        pg_app.state.maintenance_cache._checked = float("-inf")  # both copies expired, as every second in production
        pg_app.state.forwarding._checked = float("-inf")
        event.listen(engine.sync_engine, "checkout", count)
        try:
            answers = await asyncio.gather(*(client.get("/api/v1/tasks", headers=headers) for _ in range(16)))
        finally:
            event.remove(engine.sync_engine, "checkout", count)
    assert [a.status_code for a in answers] == [200] * 16
    assert len(checkouts) == 2, f"{len(checkouts)} sessions for 16 requests (one read per cache expected)"
    assert pg_app.state.maintenance_cache.refresh.runs >= 1


async def test_a_statement_waits_for_a_busy_pool_no_longer_than_the_pool_timeout(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection busy: the next statement fails with the pool-timeout error (the sessions' 503) after
    `POOL_TIMEOUT`, and the pool serves again once the busy statement is done (statements acquire without a timeout
    only while a connection is free)."""
    import asyncio

    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    monkeypatch.setattr(rawdb, "POOL_TIMEOUT", 0.3)
    settings = await backend_settings("postgres", tmp_path, lambda: services, DATABASE_POOL_SIZE=1)
    engine = create_engine(settings)
    try:
        assert await rawdb.fetchrow(engine, "SELECT 1") is not None
        busy = asyncio.ensure_future(rawdb.fetchrow(engine, "SELECT pg_sleep(1.5)"))
        await asyncio.sleep(0.2)
        with pytest.raises(PoolTimeoutError):
            await rawdb.fetchrow(engine, "SELECT 2")
        await busy
        row = await rawdb.fetchrow(engine, "SELECT 3")
        assert row is not None and row[0] == 3
    finally:
        await rawdb.close(engine)
        await engine.dispose()
