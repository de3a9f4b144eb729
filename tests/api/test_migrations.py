from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from tests.conftest import backend_settings
from timetodo.core.database import create_engine
from timetodo.core.migrations import current_revision, downgrade_async, head_revision, upgrade_async
from timetodo.models import Base


async def _tables(settings: object) -> set[str]:
    engine = create_engine(settings, pooled=False)  # type: ignore[arg-type]
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_up_down_up(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = await backend_settings(backend, tmp_path, lambda: request.getfixturevalue("services"))
    expected = set(Base.metadata.tables)
    assert expected <= await _tables(settings)
    engine = create_engine(settings, pooled=False)
    assert await current_revision(engine) == head_revision()
    await engine.dispose()

    await downgrade_async(settings.DATABASE_URL, "base")
    assert not (expected & await _tables(settings))
    await upgrade_async(settings.DATABASE_URL)
    assert expected <= await _tables(settings)


async def test_migrations_match_the_models(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Autogenerate against the migrated schema finds nothing: every model change has its migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    settings = await backend_settings(backend, tmp_path, lambda: request.getfixturevalue("services"))
    engine = create_engine(settings, pooled=False)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": False}), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == [], diff


async def test_concurrent_upgrades_of_a_fresh_postgres_database_do_not_race(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Several instances starting together on an empty database: one migrates, the others wait and find head."""
    if backend != "postgres":
        pytest.skip("PostgreSQL serialises migrations with an advisory lock; SQLite has one writer anyway")
    import asyncio

    from tests.support import create_database

    services = request.getfixturevalue("services")
    url = await create_database(services.postgres_url)
    await asyncio.gather(*(upgrade_async(url) for _ in range(3)))
    from timetodo.core.settings import Settings

    engine = create_engine(Settings(DATABASE_URL=url), pooled=False)
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
