from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from tests.conftest import backend_settings
from timetodo.core.database import create_engine
from timetodo.core.schema import current_revision, downgrade_async, head_revision, upgrade_async
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
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Several instances starting together on an empty database (separate processes, as in production): one
    migrates, the others wait for it and find head applied."""
    if backend != "postgres":
        pytest.skip("PostgreSQL serialises migrations with an advisory lock; SQLite has one writer anyway")
    import asyncio
    import os
    import sys

    from tests.support import create_database
    from timetodo.core.settings import Settings

    services = request.getfixturevalue("services")
    url = await create_database(services.postgres_url)
    timetodo = str(Path(sys.executable).parent / "timetodo")
    env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(tmp_path)}
    procs = [
        await asyncio.create_subprocess_exec(
            timetodo, "db", "upgrade", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [await asyncio.wait_for(proc.communicate(), 120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err.decode()[-500:] for _, err in outputs]
    engine = create_engine(Settings(DATABASE_URL=url), pooled=False)
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
