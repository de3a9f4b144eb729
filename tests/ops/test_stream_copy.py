"""The streaming database copy (`adapters.postgres.stream`, pgcopydb's way: COPY piped source → target, indexes
built after) against real PostgreSQL: every row in exact text, sequences, constraints and indexes, a stale target
replaced, a large table split into key ranges copied side by side."""

from __future__ import annotations

import asyncpg
import pytest

from tests.ops.test_delta import T0, add_task, add_user, clone_template, connect, populate, snapshot_of
from tests.support import Services, create_database
from timetodo.core.schema import upgrade_async
from timetodo.ops.adapters.postgres import PgTarget, chunks
from timetodo.ops.adapters.postgres.stream import stream_database
from timetodo.ops.migrate.incremental import verify_copy

pytestmark = pytest.mark.slow


async def definitions(url: str) -> set[str]:
    """Every index and constraint of the public schema, as PostgreSQL prints them."""
    conn = await connect(url)
    try:
        indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace"
        )
        return {r[0] for r in indexes} | {r[0] for r in constraints}
    finally:
        await conn.close()


async def test_stream_copy_makes_the_target_equal_to_the_source(services: Services) -> None:
    source = await create_database(services.postgres_url)
    await upgrade_async(source)
    seed = await populate(source)
    conn = await connect(source)
    try:  # a table large enough to be split, with a text-keyed twin
        await conn.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric);"
            "INSERT INTO big SELECT g, repeat(md5(g::text), 4), g / 7.0 FROM generate_series(1, 20000) g;"
            "CREATE TABLE big_text (k text PRIMARY KEY, v int);"
            "INSERT INTO big_text SELECT 'k' || g, g FROM generate_series(1, 20000) g"
        )
        for n in range(30):
            await add_task(conn, seed["alice"], f"more {n}")
    finally:
        await conn.close()
    # a stale target: an older copy with rows the source no longer has
    target = await clone_template(source)
    conn = await connect(target)
    try:
        await add_user(conn, "stale@example.com")
        await conn.execute("CREATE TABLE leftover (id int)")
    finally:
        await conn.close()
    conn = await connect(source)
    try:
        await conn.execute("UPDATE tasks SET title = 'after the stale copy', updated_at = $1", T0)
    finally:
        await conn.close()

    result = await stream_database(source, target, jobs=2, split_bytes=256 * 1024)

    assert result["rows"]["big"] == 20000 and result["rows"]["big_text"] == 20000
    # the source's chunk hashes, computed from the streamed bytes, are the target's by the same definition
    specs, streamed = result["specs"], result["source_chunks"]
    assert specs["big"].chunks > 4 and specs["big_text"].chunks > 4  # split into groups of chunks, side by side
    assert streamed.hashes == await chunks.hash_tables(PgTarget.from_url(target), specs.values())
    assert (await verify_copy(target, specs, streamed, 2))["chunks_differing"] == 0
    got, want = await snapshot_of(target), await snapshot_of(source)
    assert got["rows"] == want["rows"] and got["text"] == want["text"]
    assert got["sequences"] == want["sequences"]
    assert await definitions(target) == await definitions(source)
    conn = await connect(target)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.leftover')") is None
        with pytest.raises(asyncpg.UniqueViolationError):  # the constraints are there, and enforced
            await conn.execute("INSERT INTO big VALUES (1, 'again', 0)")
        # the check reads every row: one changed value, one lost row are found
        await conn.execute("UPDATE big SET n = n + 1 WHERE id = 12345; DELETE FROM big_text WHERE k = 'k777'")
    finally:
        await conn.close()
    checked = await verify_copy(target, specs, streamed, 2)
    assert checked["chunks_differing"] == 2 and checked["tables_differing"] == ["big", "big_text"]
