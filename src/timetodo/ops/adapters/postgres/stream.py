"""`stream_database(source, target, jobs)`: a whole database copied by streaming COPY, the way `pgcopydb clone` does —
no dump files, no compression, the data flowing from the source's COPY straight into the target's.

Order: (1) the schema's pre-data part (types, functions, tables, sequences) with `pg_dump --schema-only` restored
into an emptied `public` schema, while the chunk map is planned (`chunks.plan_table_quickly`: primary-key ranges of
about `ROWS_PER_CHUNK` rows); (2) every table's rows, chunk by chunk — `COPY (SELECT … key range ORDER BY key) TO STDOUT`
on the source piped into `COPY … FROM STDIN` on the target (one target COPY per stream), `jobs` streams at a time,
large tables split into groups of chunks so one big table also uses every stream; (3) the post-data part (indexes,
constraints, triggers) with `pg_restore -j jobs`, built once over all the rows (faster than maintaining them row by
row); (4) sequences set to the source's values.

Guarantees:

- **One instant.** The schema dump and every stream read the same exported snapshot (`pg_export_snapshot`, held
  by one transaction for the whole copy), so the target gets the source exactly as it was at one moment, while
  the source keeps taking writes (sequences, which are not transactional, are read after the rows: they are at
  least the values the rows use).
- **The target is replaced.** Everything in the target's `public` schema is dropped first (`DROP SCHEMA public
  CASCADE`): the target database belongs to the toolkit. A failure leaves a partial target that the next run
  replaces again; the source is only read.
- Generated columns are left to the target to compute; rows travel in COPY's text format (exact for every type),
  printed under `FIXED_TEXT_OUTPUT`.
- **The source's chunk hashes come free with the copy.** Every chunk's bytes are hashed as they pass through
  (`chunks.ChunkHasher`, the one definition of a chunk's hash): the result carries the chunk map and the source's
  hashes in the copy's snapshot, so verifying the copy only has to hash the target (`chunks.hash_tables_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from timetodo.ops.adapters.postgres.catalog import fix_text_output, list_tables
from timetodo.ops.adapters.postgres.chunks import (
    ROWS_PER_CHUNK,
    ChunkHasher,
    ChunkSpec,
    Hashed,
    TableHashes,
    copy_sequences,
    plan_table_quickly,
    snapshot_horizon,
    snapshot_identity,
    table_oids,
)
from timetodo.ops.adapters.postgres.dump import _run_tool
from timetodo.ops.adapters.postgres.target import PgError, PgTarget, connect, tool

SPLIT_BYTES = 64 * 1024 * 1024
"""Tables larger than this are copied as several key ranges in parallel."""

QUEUE_CHUNKS = 16
"""COPY data chunks buffered between a source stream and its target stream."""


async def _pipe(
    source: asyncpg.Connection, target: asyncpg.Connection, spec: ChunkSpec, first: int, end: int
) -> tuple[int, TableHashes]:
    """One COPY stream: chunks first … end-1 of a table, each read by its own ordered COPY on the source
    (`ChunkSpec.copy_sql`), hashed as it passes (`ChunkHasher`) and fed to one COPY on the target as it arrives.
    Rows copied, and the chunks' hashes."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
    hashes: TableHashes = {}

    async def produce() -> None:
        try:
            for chunk in range(first, end):
                hasher = ChunkHasher(spec.column is not None)

                async def out(data: bytes, hasher: ChunkHasher = hasher) -> None:
                    hasher.update(data)
                    await queue.put(data)

                await source.copy_from_query(spec.copy_sql(chunk), output=out, format="text")
                if hasher.rows:
                    hashes[chunk] = hasher.digest()
        finally:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (data := await queue.get()) is not None:
            yield data

    producer = asyncio.create_task(produce())
    try:
        status = await target.copy_to_table(
            spec.table, source=chunks(), columns=list(spec.columns), schema_name="public", format="text"
        )
    except BaseException:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        raise
    await producer
    return int(str(status).rsplit(" ", 1)[-1]), hashes


async def _parts(conn: asyncpg.Connection, spec: ChunkSpec, jobs: int, split_bytes: int) -> list[tuple[int, int]]:
    """`spec`'s chunks in `jobs × 2` contiguous groups (key ranges streamed side by side) when the table is larger
    than `split_bytes`, else one group."""
    size = int(await conn.fetchval("SELECT pg_table_size($1::regclass)", spec.qname))
    groups = jobs * 2 if size > split_bytes and jobs > 1 else 1
    groups = min(groups, spec.chunks)
    step = -(-spec.chunks // groups)
    return [(n, min(n + step, spec.chunks)) for n in range(0, spec.chunks, step)]


async def stream_database(
    source_url: str,
    target_url: str,
    jobs: int,
    work_dir: Path | None = None,
    *,
    split_bytes: int = SPLIT_BYTES,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> dict[str, Any]:
    """The source database copied onto the target (see the module's docstring); rows per table and timings, and
    (not JSON) `specs`, the chunk map planned in the copy's snapshot, and `source_chunks`, the source's chunk
    hashes in that snapshot (`chunks.Hashed`) computed from the streamed rows."""
    source, target = PgTarget.from_url(source_url), PgTarget.from_url(target_url)
    jobs = max(1, jobs)
    started = time.monotonic()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="stream-") as tmp:
        schema = Path(tmp) / "schema.dump"
        holder = await connect(source)
        try:
            await fix_text_output(holder)
            await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = str(await holder.fetchval("SELECT pg_export_snapshot()"))
            size = int(await holder.fetchval("SELECT pg_database_size(current_database())"))
            horizon, identity = await snapshot_horizon(holder), await snapshot_identity(holder)
            oids = await table_oids(holder)

            async def schema_copy() -> None:
                await _run_tool(
                    [
                        tool("pg_dump"), "--schema-only", "--format=custom", "--no-owner", "--no-privileges",
                        f"--snapshot={snapshot}", f"--file={schema}", f"--dbname={source.url}",
                    ],
                    source,
                    "pg_dump --schema-only",
                )  # fmt: skip
                admin = await connect(target)
                try:
                    await admin.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
                finally:
                    await admin.close()
                await _restore(target, schema, "pre-data", 1)

            async def plan() -> dict[str, ChunkSpec]:  # the chunk map, in the snapshot, while the schema is copied
                return {
                    name: await plan_table_quickly(holder, name, rows_per_chunk) for name in await list_tables(holder)
                }

            _, specs = await asyncio.gather(schema_copy(), plan())
            timings["schema_seconds"] = round(time.monotonic() - started, 3)

            copy_started = time.monotonic()
            work: list[tuple[ChunkSpec, int, int]] = []
            for spec in specs.values():
                work += [(spec, first, end) for first, end in await _parts(holder, spec, jobs, split_bytes)]
            rows: dict[str, int] = {}
            hashes: dict[str, TableHashes] = {name: {} for name in specs}

            async def stream_worker() -> None:
                src, dst = await connect(source), await connect(target)
                try:
                    await fix_text_output(src)
                    await fix_text_output(dst)
                    await src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    await src.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    while work:
                        spec, first, end = work.pop(0)
                        copied, found = await _pipe(src, dst, spec, first, end)
                        rows[spec.table] = rows.get(spec.table, 0) + copied
                        hashes[spec.table].update(found)
                finally:
                    for conn in (src, dst):
                        with contextlib.suppress(Exception):
                            await conn.close()

            await asyncio.gather(*(stream_worker() for _ in range(min(jobs, len(work)) or 1)))
            timings["rows_seconds"] = round(time.monotonic() - copy_started, 3)
            index_started = time.monotonic()
            await _restore(target, schema, "post-data", jobs)
            timings["post_data_seconds"] = round(time.monotonic() - index_started, 3)
            dst = await connect(target)
            try:
                await copy_sequences(holder, dst)
                await dst.execute("ANALYZE")
            finally:
                await dst.close()
        finally:
            with contextlib.suppress(Exception):
                await holder.close()
    return {
        "method": "stream",
        "bytes": size,
        "rows": rows,
        **timings,
        "seconds": round(time.monotonic() - started, 3),
        "specs": specs,
        "source_chunks": Hashed(hashes, horizon, identity, oids, rehashed=sum(s.chunks for s in specs.values())),
    }


async def _restore(target: PgTarget, schema: Path, section: str, jobs: int) -> None:
    await _run_tool(
        [
            tool("pg_restore"), f"--section={section}", "--no-owner", "--no-privileges", "--exit-on-error",
            f"--jobs={jobs}", f"--dbname={target.url}", str(schema),
        ],
        target,
        f"pg_restore --section={section}",
    )  # fmt: skip


__all__ = ["PgError", "stream_database"]
