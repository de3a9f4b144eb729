"""The maintenance freeze also holds for idempotency bookkeeping and refresh rotation (issue 10, item 1).

The PostgreSQL cases hold row locks from a second connection to stop a request at a chosen point, switch
maintenance on, and check that nothing commits after the switch has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.support import new_user
from timetodo.core.maintenance import set_maintenance
from timetodo.core.settings import Settings


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.asynccontextmanager
async def maintenance(app: FastAPI) -> AsyncIterator[None]:
    async with app.state.sessionmaker() as session:
        await set_maintenance(session, True)
    try:
        yield
    finally:
        async with app.state.sessionmaker() as session:
            await set_maintenance(session, False)


async def _switch_on(app: FastAPI) -> None:
    async with app.state.sessionmaker() as session:
        await set_maintenance(session, True)


async def _switch_off(app: FastAPI) -> None:
    async with app.state.sessionmaker() as session:
        await set_maintenance(session, False)


async def _snapshot(conn: asyncpg.Connection, table: str) -> str:
    return str(
        await conn.fetchval(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t")
    )


async def test_idempotency_record_commits_with_the_write(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, backend: str
) -> None:
    """A request with a key is held in its business write; maintenance-on waits for it; after `on` returns the
    idempotency table no longer changes (before: the response was stored in a third, unguarded transaction)."""
    if backend != "postgres":
        pytest.skip("row locks from a second connection: PostgreSQL")
    auth, tokens = await new_user(client)
    key = uuid.uuid4().hex
    conn = await asyncpg.connect(_plain(settings.DATABASE_URL))
    blocker = await asyncpg.connect(_plain(settings.DATABASE_URL))
    switch: asyncio.Task[None] | None = None
    try:
        user_lock = conn.transaction()
        await user_lock.start()
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", tokens["user"]["id"])
        pending = asyncio.create_task(
            client.post("/api/v1/tasks", json={"title": "held"}, headers={**auth, "Idempotency-Key": key})
        )
        await asyncio.sleep(0.5)
        # lock the claim's row if one was committed already (the old design), so its later update must wait
        row_lock = blocker.transaction()
        await row_lock.start()
        await blocker.execute("SELECT 1 FROM idempotency_keys WHERE key = $1 FOR UPDATE", key)
        switch = asyncio.create_task(_switch_on(app))
        await asyncio.sleep(0.3)
        await user_lock.rollback()
        await asyncio.wait_for(asyncio.shield(switch), 10)
        frozen = await _snapshot(conn, "idempotency_keys")
        await row_lock.rollback()
        response = await asyncio.wait_for(pending, 10)
        await asyncio.sleep(0.3)
        assert await _snapshot(conn, "idempotency_keys") == frozen
        assert response.status_code == 201, response.text
        stored = await conn.fetchrow("SELECT status_code, body FROM idempotency_keys WHERE key = $1", key)
        assert stored is not None and stored["status_code"] == 201
    finally:
        if switch is not None:
            with contextlib.suppress(Exception):
                await switch
        await _switch_off(app)
        await conn.close()
        await blocker.close()
    again = await client.post("/api/v1/tasks", json={"title": "held"}, headers={**auth, "Idempotency-Key": key})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == response.json()


async def test_refresh_rotation_waits_for_or_sees_the_freeze(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, backend: str
) -> None:
    """The rotation is held on its token row; maintenance-on must wait for it (before: `on` returned at once and the
    rotation committed afterwards)."""
    if backend != "postgres":
        pytest.skip("row locks from a second connection: PostgreSQL")
    _auth, tokens = await new_user(client)
    token_id = int(tokens["refresh_token"].split(".")[0])
    conn = await asyncpg.connect(_plain(settings.DATABASE_URL))
    switch: asyncio.Task[None] | None = None
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT 1 FROM refresh_tokens WHERE id = $1 FOR UPDATE", token_id)
        pending = asyncio.create_task(
            client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        )
        await asyncio.sleep(0.5)
        switch = asyncio.create_task(_switch_on(app))
        await asyncio.sleep(0.5)
        # if `on` has returned while the rotation is still held, the state now is the frozen one
        frozen = await _snapshot(conn, "refresh_tokens") if switch.done() else None
        await lock.rollback()
        await asyncio.wait_for(asyncio.shield(switch), 10)
        frozen = frozen or await _snapshot(conn, "refresh_tokens")
        response = await asyncio.wait_for(pending, 10)
        await asyncio.sleep(0.3)
        assert response.status_code == 200, response.text
        assert await _snapshot(conn, "refresh_tokens") == frozen
    finally:
        if switch is not None:
            with contextlib.suppress(Exception):
                await switch
        await _switch_off(app)
        await conn.close()


async def test_reuse_during_maintenance_revokes_the_family(app: FastAPI, client: httpx.AsyncClient) -> None:
    """A consumed refresh token presented during maintenance: 401, and the family stays revoked afterwards."""
    _auth, tokens = await new_user(client)
    first = tokens["refresh_token"]
    rotated = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200
    current = rotated.json()["refresh_token"]
    async with maintenance(app):
        reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
        assert reused.status_code == 401 and reused.json()["error"] == "refresh_token_reused"
        during = await client.post("/api/v1/auth/refresh", json={"refresh_token": current})
        assert during.status_code == 401, during.text
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": current})
    assert after.status_code == 401, after.text
