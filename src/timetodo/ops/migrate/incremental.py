"""The `delta` strategy's copy: after a first full copy, make the target equal to the source again by moving only
what differs — database chunks (see `adapters.postgres.chunks`), Redis keys, uploads (rsync) — side by side.

Guarantees:

- **Exact when the source is frozen.** `delta_pass` hashes every chunk of every table on both sides (each side in one
  snapshot, in parallel), compares the rows of the chunks whose hashes differ by primary key, and carries the
  inserted, updated and deleted rows to the target in one transaction (`rollback.apply_delta`: deletes that cannot
  cascade first, upserts parents first, the other deletes children first — a row deleted on the target is always
  one the source no longer has, so `ON DELETE CASCADE` removes only rows the source lost too). Tables without a
  primary key are replaced whole when their hash differs; then every sequence takes the source's exact state. With
  `verify`, the copied chunks are hashed again on the target and must equal the source's: the pass returns the
  problems it found (none when the databases are equal).
- **Harmless when the source is live** (`live`: the pre-pass before the freeze): a row changing under the pass
  makes it stop with nothing of its transaction committed, or copy a state the next pass corrects; the in-freeze
  pass is what makes the target exact.
- `app_state` (maintenance, forwarding) is deployment state: each side keeps its own.
- Idempotent: a pass killed at any point is simply run again (it compares, it does not remember).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.postgres import PgTarget, chunks, mask_url
from timetodo.ops.migrate.data import copy_files
from timetodo.ops.migrate.rollback.apply import apply_delta
from timetodo.ops.migrate.rollback.delta import (
    Delta,
    DeltaError,
    Key,
    TableDelta,
    TableInfo,
    check_shapes,
    record_key,
    scrub,
    table_infos,
    text_connection,
)

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context

log = logging.getLogger("timetodo.ops.migrate")
EXCLUDE = ("app_state",)
"""Deployment state (maintenance flag, forwarding target): never carried from one side to the other."""


class SchemaDiffers(DeltaError):
    """The two databases do not have the same tables and columns: the delta cannot be used (the dump strategy can)."""


def map_path(ctx: Context) -> Path:
    return ctx.work_dir / "delta" / "chunks.json"


def save_specs(path: Path, specs: dict[str, chunks.ChunkSpec]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: spec.to_dict() for name, spec in specs.items()}))
    tmp.replace(path)


def load_specs(path: Path) -> dict[str, chunks.ChunkSpec] | None:
    if not path.exists():
        return None
    return {name: chunks.ChunkSpec.from_dict(data) for name, data in json.loads(path.read_text()).items()}


async def plan_specs(source_url: str) -> dict[str, chunks.ChunkSpec]:
    """The chunk spec of every table of the source (boundaries from its keys now)."""
    async with text_connection(PgTarget.from_url(source_url)) as conn:
        return await chunks.plan_tables(conn, exclude=EXCLUDE)


async def _rows_of(
    conn: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int]
) -> dict[Key, str]:
    where, args = chunks.chunk_filter(spec, wanted)
    sql = f"SELECT {info.key_select()}, {info.row_hash()} FROM {info.qname} AS t WHERE {where}"  # noqa: S608
    width = len(info.key)
    return {record_key(row, width): str(row[width]) for row in await conn.fetch(sql, *args)}


async def _row_delta(
    source: asyncpg.Connection, target: asyncpg.Connection, info: TableInfo, spec: chunks.ChunkSpec, wanted: list[int]
) -> TableDelta:
    """The rows of chunks `wanted` the target must insert, update and delete to equal the source's."""
    ours, theirs = await _rows_of(source, info, spec, wanted), await _rows_of(target, info, spec, wanted)
    delta = TableDelta(key_columns=[c.name for c in info.key], rows_current=len(ours), rows_snapshot=len(theirs))
    for key in sorted(ours, key=repr):
        if key not in theirs:
            delta.inserted.append(key)
        elif ours[key] != theirs[key]:
            delta.updated.append(key)
    delta.deleted = sorted((key for key in theirs if key not in ours), key=repr)
    return delta


async def delta_pass(
    source_url: str,
    target_url: str,
    specs: dict[str, chunks.ChunkSpec],
    *,
    jobs: int = 2,
    verify: bool = False,
) -> dict[str, Any]:
    """Make the target's database equal to the source's by copying only the differing chunks (see the module
    docstring). Returns what it compared, moved and how long each part took; `problems` when `verify` found any."""
    started = time.monotonic()
    src_t, dst_t = PgTarget.from_url(source_url), PgTarget.from_url(target_url)
    async with text_connection(src_t) as src, text_connection(dst_t) as dst:
        src_info, dst_info = await table_infos(src), await table_infos(dst)
        names = [name for name in src_info if name not in EXCLUDE]
        try:
            check_shapes(names, src_info, dst_info, "target")
        except DeltaError as exc:
            raise SchemaDiffers(str(exc)) from None
        extra = sorted(set(dst_info) - set(src_info) - set(EXCLUDE))
        if extra:
            raise SchemaDiffers(f"tables only on the target: {', '.join(extra)}")
    missing = [name for name in names if name not in specs]
    specs = {**specs, **{name: spec for name, spec in (await plan_specs(source_url)).items() if name in missing}}
    wanted = [specs[name] for name in names]
    ours, theirs = await asyncio.gather(
        chunks.hash_tables(src_t, wanted, jobs), chunks.hash_tables(dst_t, wanted, jobs)
    )
    hashed = time.monotonic()
    differing = {name: chunks.differing(ours[name], theirs[name]) for name in names}
    differing = {name: found for name, found in differing.items() if found}
    delta = Delta()
    whole: list[str] = []
    step = "comparing rows"
    try:
        async with (
            text_connection(src_t) as src,
            text_connection(dst_t) as dst,
            src.transaction(isolation="repeatable_read", readonly=True),
            dst.transaction(isolation="repeatable_read", readonly=True),
        ):
            for name, found in differing.items():
                if specs[name].column is None or not src_info[name].key:
                    whole.append(name)
                else:
                    delta.tables[name] = await _row_delta(src, dst, src_info[name], specs[name], found)
        compared = time.monotonic()
        step = "applying the rows"
        applied = await apply_delta(delta, source_url, target_url)
        step = "copying whole tables and sequences"
        whole_rows: dict[str, int] = {}
        async with text_connection(src_t) as src, text_connection(dst_t) as dst:
            async with src.transaction(isolation="repeatable_read", readonly=True), dst.transaction():
                for name in whole:
                    whole_rows[name] = await chunks.copy_table(src, dst, name)
                sequences = await chunks.copy_sequences(src, dst)
            problems: list[str] = []
            if verify:
                step = "verifying the copied chunks"
                for name, found in differing.items():
                    now = await chunks.hash_table(dst, specs[name], found)
                    expected = {n: ours[name][n] for n in found if n in ours[name]}
                    if now != expected:
                        problems.append(f"{name}: {len(chunks.differing(now, expected))} chunks still differ")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise DeltaError(
            f"the delta copy to {mask_url(dst_t.url)} failed while {step}: {scrub((src_t, dst_t), str(exc))}"
        ) from None
    ended = time.monotonic()
    totals = applied.to_dict()["totals"]
    return {
        "strategy": "delta",
        "tables": len(names),
        "chunks": sum(specs[name].chunks for name in names),
        "chunks_copied": sum(len(found) for found in differing.values()),
        "rows": sum(totals.values()) + sum(whole_rows.values()),
        "rows_source": sum(n for table in ours.values() for n, _ in table.values()),
        **totals,
        "whole_tables": whole_rows,
        "sequences": len(sequences),
        "chunks_by_table": {name: len(found) for name, found in sorted(differing.items())},
        "hash_seconds": round(hashed - started, 3),
        "compare_seconds": round(compared - hashed, 3),
        "apply_seconds": round(ended - compared, 3),
        "seconds": round(ended - started, 3),
        "problems": problems,
    }


async def hash_both(source_url: str, target_url: str, specs: dict[str, chunks.ChunkSpec], jobs: int) -> dict[str, Any]:
    """One hashing pass of both sides (the chunk map after the first copy): how long it takes is what the freeze
    will cost, and how many chunks already differ."""
    started = time.monotonic()
    ours, theirs = await asyncio.gather(
        chunks.hash_tables(PgTarget.from_url(source_url), specs.values(), jobs),
        chunks.hash_tables(PgTarget.from_url(target_url), specs.values(), jobs),
    )
    return {
        "tables": len(specs),
        "chunks": sum(spec.chunks for spec in specs.values()),
        "chunks_differing": sum(len(chunks.differing(ours[n], theirs[n])) for n in specs),
        "hash_seconds": round(time.monotonic() - started, 3),
    }


async def copy_delta(ctx: Context, label: str, *, live: bool) -> dict[str, Any]:
    """Database (chunks), Redis (changed keys) and uploads (rsync) from the source onto the target, side by side;
    the target's app is stopped meanwhile. `live`: the source still takes writes (the pre-pass)."""
    target_db = await ctx.target_db_url()
    target_redis = await ctx.target_redis_url()
    jobs = ctx.config.parallel_jobs
    started = time.monotonic()
    specs = load_specs(map_path(ctx))
    if specs is None or live:
        # before the freeze the boundaries are planned again from the source's keys (an index-only scan per
        # table), so tables that grew since sync keep chunks of about ROWS_PER_CHUNK rows; the freeze reuses them
        specs = await plan_specs(ctx.secrets.source_database_url)
        save_specs(map_path(ctx), specs)

    async def database() -> dict[str, Any]:
        async with ctx.activity(f"{label}: database chunks (hash both sides, copy what differs)"):
            try:
                return await delta_pass(ctx.secrets.source_database_url, target_db, specs, jobs=jobs, verify=not live)
            except SchemaDiffers:
                raise
            except DeltaError as exc:
                if not live:
                    raise
                # the source changed under the pass: nothing of it was committed; the in-freeze pass copies it
                log.warning(f"{label}: database pre-pass abandoned: {exc}")
                return {"strategy": "delta", "abandoned": str(exc)}

    async def keys() -> dict[str, Any]:
        if not (ctx.secrets.source_redis_url and target_redis):
            return {}
        async with ctx.activity(f"{label}: Redis keys changed since the copy (SCAN + DUMP compare)") as progress:
            moved = await redisops.copy_redis_delta(
                ctx.secrets.source_redis_url, target_redis, connections=jobs * 2, progress=progress
            )
        return moved.to_dict()

    db, redis_result, files = await asyncio.gather(database(), keys(), copy_files(ctx, live=live))
    return {"db": db, "redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


async def chunk_map(ctx: Context) -> dict[str, Any]:
    """After the first copy (sync): plan the chunks from the source, save them, hash both sides once."""
    async with ctx.activity("sync: chunk map (hash both sides)"):
        specs = await plan_specs(ctx.secrets.source_database_url)
        save_specs(map_path(ctx), specs)
        with contextlib.suppress(DeltaError):
            return await hash_both(
                ctx.secrets.source_database_url, await ctx.target_db_url(), specs, ctx.config.parallel_jobs
            )
    return {"tables": len(specs)}
