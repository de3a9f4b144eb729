"""The PostgreSQL pool hands out live connections without a round trip per checkout (no `pool_pre_ping`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from sqlalchemy import event, text

from tests.conftest import make_settings
from tests.support import Services, create_database
from timetodo.core.database import create_engine


async def test_connections_closed_by_the_server_are_replaced_without_a_ping(services: Services, tmp_path: Path) -> None:
    url = await create_database(services.postgres_url)
    engine = create_engine(make_settings(tmp_path, DATABASE_URL=url, REDIS_URL=None))
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        async with engine.connect() as conn:
            first_pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first_pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's FIN reaches the idle pooled connection: asyncpg marks it closed
        statements.clear()
        async with engine.connect() as conn:  # no error: the closed connection was swapped at checkout
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert pid != first_pid
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]
        # each checkout ran only the statement asked for: no ping round trip in between
        assert set(statements) == {"SELECT pg_backend_pid()"}
    finally:
        await engine.dispose()
