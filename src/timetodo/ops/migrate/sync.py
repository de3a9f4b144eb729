"""Step `sync` (seed: the first half of run_migration.sh): a first full copy of the database, Redis and the uploads
onto the target while the source stays live, then starts the target's app held (maintenance on in the
target's database: it writes nothing until the cutover opens it). It measures the throughput the downtime estimate uses, and warms the
target so that the final copy at cutover moves only what changed (files) or takes as long as this one (database).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timetodo.core.maintenance import switch_maintenance
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.postgres.stream import stream_database
from timetodo.ops.migrate.data import copy_files

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

log = logging.getLogger("timetodo.ops.migrate")
NAME = "sync"


async def plan(ctx: Context) -> list[PlanLine]:
    from timetodo.ops.migrate import logical

    if logical.active(ctx):
        return logical.plan_sync(ctx)
    target, jobs = ctx.target_ssh().describe(), ctx.config.parallel_jobs
    return [
        (target, "stop the app"),
        (
            "local",
            f"pg_dump --schema-only; COPY source → target in {jobs} streams; "
            f"pg_restore --section=post-data -j{jobs} (SSH tunnel)",
        ),
        (target, "timetodo db upgrade"),
        ("local", "Redis copy (ABSTTL REPLACE)"),
        ("local", "rsync source → staging → target"),
        *(
            [("local", "chunk map: key ranges + hashes per table, both sides")]
            if ctx.config.strategy == "delta"
            else []
        ),
        (target, "maintenance on in its database (held until the cutover); start the app; wait healthy"),
    ]


async def writable(url: str) -> None:
    """The dump carries the source's maintenance flag (on during cutover): the target must take writes. Switched
    with the app's own function, never SQL of the toolkit's."""
    await switch_maintenance(url, False, None)


async def copy_everything(ctx: Context, dump_dir: Path | None, label: str, *, live: bool) -> dict[str, Any]:
    """Database, Redis and files from the source onto the target (whose app is stopped meanwhile). The three are
    independent and run side by side: the freeze lasts as long as the slowest, not the sum. `live`: the source is
    not frozen (the copy before the cutover), so uploads deleted meanwhile are counted, not fatal. The database is
    streamed (COPY piped source → target, `adapters.postgres.stream`), or, with `dump_dir`, dumped there and
    restored (the dump strategy's cutover keeps its dump for the snapshot database)."""
    runtime = await ctx.runtime()
    target_db = await ctx.target_db_url()
    target_redis = await ctx.target_redis_url()
    jobs = ctx.config.parallel_jobs
    started = time.monotonic()

    async def database() -> dict[str, Any]:
        if dump_dir is None:
            async with ctx.activity(f"{label}: database streamed, COPY source → target ({jobs} streams)"):
                streamed = await stream_database(ctx.secrets.source_database_url, target_db, jobs, ctx.work_dir)
            specs, source_chunks = streamed.pop("specs"), streamed.pop("source_chunks")
            if ctx.config.strategy == "delta":  # the source's chunk hashes, computed by the stream: the copy's check
                from timetodo.ops.migrate.incremental import save_stream_hashes

                save_stream_hashes(ctx, specs, source_chunks)
            log.info(f"{label}: database streamed", extra={"seconds": streamed["seconds"]})
            await writable(target_db)
            await runtime.migrate_db()
            return {k: v for k, v in streamed.items() if k != "rows"} | {"rows": sum(streamed["rows"].values())}
        async with ctx.activity(f"{label}: pg_dump -Fd -j{jobs} (source)"):
            dumped = await pg.dump_database(ctx.secrets.source_database_url, dump_dir, jobs)
        log.info(f"{label}: database dumped", extra=dumped)
        async with ctx.activity(f"{label}: pg_restore -j{jobs} (target)"):
            restored = await pg.restore_database(target_db, dump_dir, jobs)
        await writable(target_db)
        await runtime.migrate_db()
        return {"bytes": dumped["bytes"], "dump_seconds": dumped["seconds"], "restore_seconds": restored["seconds"]}

    async def keys() -> dict[str, Any]:
        if not (ctx.secrets.source_redis_url and target_redis):
            return {}
        async with ctx.activity(f"{label}: Redis keys (DUMP → RESTORE ABSTTL)") as progress:
            copied = await redisops.copy_redis(
                ctx.secrets.source_redis_url, target_redis, connections=jobs * 2, flush_target=True, progress=progress
            )
        return copied.to_dict()

    db, redis_result, files = await asyncio.gather(database(), keys(), copy_files(ctx, live=live))
    return {"db": db, "redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


async def run(ctx: Context) -> dict[str, Any]:
    from timetodo.ops.migrate import logical

    if logical.active(ctx) and (replicated := await logical.sync(ctx)) is not None:
        return replicated  # None: the target cannot subscribe to the source, the migration fell back to delta
    runtime = await ctx.runtime()
    await runtime.stop()
    result = await copy_everything(ctx, None, "sync", live=True)
    if ctx.config.strategy == "delta":
        # the copy checked in full: the target's chunks hashed and compared with the hashes the stream computed
        # on the source from the rows it sent
        from timetodo.ops.migrate.incremental import chunk_map

        result["chunk_map"] = await chunk_map(ctx)
    # the target's app runs held until the cutover opens it: it must write nothing (reminders fired twice, rows
    # the final copy would have to undo) — maintenance on in its own app_state, which no copy carries
    await switch_maintenance(await ctx.target_db_url(), True, "timetodo migrate: this host takes over at the cutover")
    await runtime.start()
    await runtime.wait_healthy(timeout=300)
    return result
