"""`stream_database(source, target, jobs)`: a whole database copied by streaming COPY, the way `pgcopydb clone` does —
no dump files, no compression, the data flowing from the source's COPY straight into the target's.

Order: (1) the schema's pre-data part (types, functions, tables, sequences) with `pg_dump --schema-only` restored
into an emptied `public` schema; (2) every table's rows, `COPY (SELECT …) TO STDOUT` on the source piped into
`COPY … FROM STDIN` on the target, `jobs` streams at a time, large tables split into primary-key ranges
(`chunks.plan_table`) so one big table also uses every stream; (3) the post-data part (indexes, constraints,
triggers) with `pg_restore -j jobs`, built once over all the rows (faster than maintaining them row by row);
(4) sequences set to the source's values.

Guarantees:

- **One instant.** The schema dump and every stream read the same exported snapshot (`pg_export_snapshot`, held
  by one transaction for the whole copy), so the target gets the source exactly as it was at one moment, while
  the source keeps taking writes (sequences, which are not transactional, are read after the rows: they are at
  least the values the rows use).
- **The target is replaced.** Everything in the target's `public` schema is dropped first (`DROP SCHEMA public
  CASCADE`): the target database belongs to the toolkit. A failure leaves a partial target that the next run
  replaces again; the source is only read.
- Generated columns are left to the target to compute; rows travel in COPY's text format (exact for every type).
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

from timetodo.ops.adapters.postgres.catalog import columns, list_tables, primary_keys
from timetodo.ops.adapters.postgres.chunks import ChunkSpec, chunk_filter, copy_sequences, plan_table
from timetodo.ops.adapters.postgres.dump import _run_tool
from timetodo.ops.adapters.postgres.target import PgError, PgTarget, connect, quote_ident, tool

INT_TYPES = frozenset({20, 21, 23})  # int8, int2, int4

SPLIT_BYTES = 64 * 1024 * 1024
"""Tables larger than this are copied as several key ranges in parallel."""

QUEUE_CHUNKS = 16
"""COPY data chunks buffered between a source stream and its target stream."""


async def _pipe(source: asyncpg.Connection, target: asyncpg.Connection, table: str, query: str, cols: list[str]) -> int:
    """One COPY stream: the source's COPY output fed to the target's COPY input as it arrives. Rows copied."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)

    async def produce() -> None:
        try:
            await source.copy_from_query(query, output=queue.put, format="text")
        finally:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (data := await queue.get()) is not None:
            yield data

    producer = asyncio.create_task(produce())
    try:
        status = await target.copy_to_table(table, source=chunks(), columns=cols, schema_name="public", format="text")
    except BaseException:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        raise
    await producer
    return int(str(status).rsplit(" ", 1)[-1])


async def _parts(conn: asyncpg.Connection, table: str, jobs: int, split_bytes: int) -> list[tuple[str, list[Any]]]:
    """WHERE conditions splitting `table` into `jobs × 2` key ranges when it is larger than `split_bytes`, else the
    whole table. An integer key is split evenly between its smallest and largest value (two index lookups); any
    other key by boundaries from an ordered pass over it (`chunks.plan_table`)."""
    qname = f"public.{quote_ident(table)}"
    size = int(await conn.fetchval("SELECT pg_table_size($1::regclass)", qname))
    key = (await primary_keys(conn, table)).get(table)
    if size <= split_bytes or jobs < 2 or not key:
        return [("true", [])]
    parts = jobs * 2
    info = next(c for c in (await columns(conn, table))[table] if c.name == key[0])
    if info.typid in INT_TYPES:
        low, high = await conn.fetchrow(
            f"SELECT min({quote_ident(info.name)}), max({quote_ident(info.name)}) FROM {qname}"  # noqa: S608
        )
        if low is None or high - low < parts:
            return [("true", [])]
        step = (high - low) // parts
        bounds = tuple(str(low + step * n) for n in range(1, parts))
        spec = ChunkSpec(table, info.name, info.type, info.collatable, bounds)
    else:
        rows = int(
            await conn.fetchval("SELECT greatest(reltuples, 1)::bigint FROM pg_class WHERE oid = $1::regclass", qname)
        )
        spec = await plan_table(conn, table, rows_per_chunk=max(1, rows // parts))
    return [chunk_filter(spec, [n]) for n in range(spec.chunks)]


async def stream_database(
    source_url: str, target_url: str, jobs: int, work_dir: Path | None = None, *, split_bytes: int = SPLIT_BYTES
) -> dict[str, Any]:
    """The source database copied onto the target (see the module's docstring); rows per table and timings."""
    source, target = PgTarget.from_url(source_url), PgTarget.from_url(target_url)
    jobs = max(1, jobs)
    started = time.monotonic()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="stream-") as tmp:
        schema = Path(tmp) / "schema.dump"
        holder = await connect(source)
        try:
            await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = str(await holder.fetchval("SELECT pg_export_snapshot()"))
            size = int(await holder.fetchval("SELECT pg_database_size(current_database())"))
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
            timings["schema_seconds"] = round(time.monotonic() - started, 3)

            copy_started = time.monotonic()
            work: list[tuple[str, str, list[Any], list[str]]] = []
            for table in await list_tables(holder):
                cols = [c.name for c in (await columns(holder, table))[table] if not c.generated]
                for where, args in await _parts(holder, table, jobs, split_bytes):
                    work.append((table, where, args, cols))
            rows: dict[str, int] = {}

            async def stream_worker() -> None:
                src, dst = await connect(source), await connect(target)
                try:
                    await src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    await src.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    while work:
                        table, where, args, cols = work.pop(0)
                        query = f"SELECT {', '.join(map(quote_ident, cols))} FROM public.{quote_ident(table)} AS t WHERE {where}"  # noqa: S608
                        if args:  # COPY takes no parameters: the range values inlined as literals
                            query = await src.fetchval("SELECT format($1, VARIADIC $2::text[])", _literal(query), args)
                        copied = await _pipe(src, dst, table, query, cols)
                        rows[table] = rows.get(table, 0) + copied
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
    return {"method": "stream", "bytes": size, "rows": rows, **timings, "seconds": round(time.monotonic() - started, 3)}


def _literal(query: str) -> str:
    """`query` as a format() template: its $n parameters become %L placeholders (in order), other % doubled."""
    out = query.replace("%", "%%")
    n = 1
    while f"${n}" in out:
        n += 1
    for i in range(n - 1, 0, -1):  # $10 before $1
        out = out.replace(f"${i}", f"%{i}$L")
    return out


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
