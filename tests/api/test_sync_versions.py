"""Sync versions on PostgreSQL come from one sequence (migration 0012, timetodo.core.tracking): one user's write
transactions do not wait for each other, and a reader never hands out a token that skips a version still in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI

from tests.api.test_sync import Mirror
from tests.conftest import asgi_client, backend_settings, running_app
from tests.support import Services, new_user


@pytest.fixture
async def pg_app(services: Services, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = await backend_settings("postgres", tmp_path, lambda: services)
    async with running_app(settings) as app:
        yield app


async def test_a_reader_never_skips_a_version_still_in_flight(pg_app: FastAPI) -> None:
    url = pg_app.state.settings.DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://")
    async with asgi_client(pg_app) as client:
        headers, tokens = await new_user(client)
        owner = int(tokens["user"]["id"])
        mirror = Mirror()
        await mirror.pull(client, headers)

        slow = await asyncpg.connect(url)
        try:
            # a write transaction of this user takes its version first and commits last
            tx = slow.transaction()
            await tx.start()
            slow_version = await slow.fetchval("SELECT ttd_sync_next_version($1)", owner)
            slow_id = await slow.fetchval(
                "INSERT INTO tasks (owner_id, title, description, priority, labels, position, done, created_at, "
                "updated_at, sync_version) VALUES ($1, 'slow', '', 4, '[]', 0, false, now(), now(), $2) RETURNING id",
                owner,
                slow_version,
            )
            # the same user's other writes do not wait for it (no per-user row lock)
            fast = await asyncio.wait_for(
                client.post("/api/v1/tasks", json={"title": "fast"}, headers=headers), timeout=10
            )
            assert fast.status_code == 201, fast.text
            # a pull now must not hand out a token past the slow version: it waits for it, or stops below it
            pull = asyncio.create_task(mirror.pull(client, headers))
            await asyncio.sleep(0.5)
            await tx.commit()
            await asyncio.wait_for(pull, timeout=10)
        finally:
            await slow.close()
        await mirror.pull(client, headers)
        assert {slow_id, fast.json()["id"]} <= set(mirror.rows["tasks"])


async def test_one_users_writers_run_concurrently_and_sync_misses_nothing(pg_app: FastAPI) -> None:
    """Many concurrent creates of one user while a client keeps pulling: the client ends with every task."""
    async with asgi_client(pg_app) as client:
        headers, _ = await new_user(client)
        mirror = Mirror()
        created: list[int] = []
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(15):
                resp = await client.post("/api/v1/tasks", json={"title": f"w{n}-{i}"}, headers=headers)
                assert resp.status_code == 201, resp.text
                created.append(resp.json()["id"])

        async def reader() -> None:
            while not stop.is_set():
                await mirror.pull(client, headers, limit=3)
                await asyncio.sleep(0)

        pulling = asyncio.create_task(reader())
        await asyncio.gather(*(writer(n) for n in range(8)))
        stop.set()
        await pulling
        await mirror.pull(client, headers, limit=3)
        assert set(mirror.rows["tasks"]) == set(created) and len(created) == 120


async def test_concurrent_one_statement_updates_and_completions_reach_the_mirror(pg_app: FastAPI) -> None:
    """PATCH of plain fields and complete run as one statement each (timetodo.tasks.repository): concurrent ones
    of one user, while a client keeps pulling, leave the client with the server's final state of every task."""
    from tests.api.test_sync import comparable, server_state

    async with asgi_client(pg_app) as client:
        headers, _ = await new_user(client)
        ids = []
        for i in range(12):
            resp = await client.post("/api/v1/tasks", json={"title": f"t{i}"}, headers=headers)
            ids.append(resp.json()["id"])
        mirror = Mirror()
        await mirror.pull(client, headers)
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            for round_no in range(6):
                task_id = ids[(n + round_no) % len(ids)]
                body = {"title": f"w{n}-{round_no}", "labels": [f"l{n}", f"l{n}"], "priority": 1 + n % 4}
                resp = await client.patch(f"/api/v1/tasks/{task_id}", json=body, headers=headers)
                assert resp.status_code == 200, resp.text
                assert resp.json()["labels"] == [f"l{n}"]
                if round_no % 3 == n % 3:
                    resp = await client.post(f"/api/v1/tasks/{task_id}/complete", headers=headers)
                    assert resp.status_code == 200 and resp.json()["done"] is True, resp.text

        async def reader() -> None:
            while not stop.is_set():
                await mirror.pull(client, headers, limit=4)
                await asyncio.sleep(0)

        pulling = asyncio.create_task(reader())
        await asyncio.gather(*(writer(n) for n in range(6)))
        stop.set()
        await pulling
        await mirror.pull(client, headers, limit=4)
        server = await server_state(client, headers)
        assert comparable(mirror.rows)["tasks"] == comparable(server)["tasks"]
        assert any(row["done"] for row in server["tasks"].values())
