"""Step `rollback` (seed: rollback.sh): back to the source with nothing lost.

Nothing stops before the source is known to be ready: reachable, its database answering, and still frozen after a
switch (`check_source`). Then the target app stops; every write it accepted after the switch is carried back to the
source (`compute`: the row-level delta of the target against the cutover snapshot; `apply`: that delta applied to
the source in one transaction, refused when the source changed meanwhile — `delta` holds the types and the
guarantees; strategy `logical`: the keys come from the reverse stream instead, `reverse`, and the row delta is the
fallback when the stream cannot tell — the report says why); Redis and the uploads are copied back; the webhook and
DNS point at the source again; the source leaves maintenance last; no replication slot is left on the target.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.filecopy import copy_tree
from timetodo.ops.adapters.rsync import Place
from timetodo.ops.errors import EXIT_REFUSED, StepError
from timetodo.ops.migrate.data import connect, source_place, staging_dir, target_place
from timetodo.ops.migrate.rollback.apply import apply_delta
from timetodo.ops.migrate.rollback.compute import compute_delta
from timetodo.ops.migrate.rollback.delta import (
    ApplyResult,
    Delta,
    DeltaConflict,
    DeltaError,
    NoPrimaryKey,
    TableCounts,
    TableDelta,
)
from timetodo.ops.migrate.rollback.since import compute_delta_since, xid_horizon
from timetodo.ops.migrate.switch import end_forwarding, switch_back

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine
    from timetodo.ops.migrate.source_api import SourceApi

__all__ = [
    "ApplyResult",
    "Delta",
    "DeltaConflict",
    "DeltaError",
    "NoPrimaryKey",
    "TableCounts",
    "TableDelta",
    "apply_delta",
    "compute_delta",
    "compute_delta_since",
    "plan",
    "run",
    "xid_horizon",
]

NAME = "rollback"


async def plan(ctx: Context) -> list[PlanLine]:
    return [
        (ctx.config.source.api_url, "check: reachable, still in maintenance (after a switch); database answers"),
        (ctx.config.source.api_url, "DELETE /api/v1/admin/forwarding (when the switch started it)"),
        (ctx.target_ssh().describe(), "stop the app"),
        (
            "local",
            "strategy logical: the keys the target wrote, from its reverse replication slot; otherwise (or when the "
            "slot cannot tell) the row delta target vs cutover snapshot → applied to the source in one transaction",
        ),
        (ctx.target_ssh().describe(), "the reverse replication slot and publication dropped (strategy logical)"),
        ("local", "Redis and uploads back; webhook and DNS back; source maintenance off"),
    ]


log = logging.getLogger("timetodo.ops.migrate")


async def _carry_back(ctx: Context) -> dict[str, Any]:
    """Every write the target accepted since the switch, back onto the source."""
    result: dict[str, Any] = {}
    target_db, snapshot = await ctx.target_db_url(), await ctx.snapshot_db_url()
    # the maintenance flag is the one thing that must not travel back: the source leaves maintenance last
    exclude = ("alembic_version", "app_state")
    streamed = await _from_reverse_stream(ctx, snapshot, exclude)
    if streamed.get("via") == "reverse stream":
        result["database"] = streamed
    else:
        result["database"] = {**await _row_delta(ctx, target_db, snapshot, exclude), **streamed}
    target_redis = await ctx.target_redis_url()
    if ctx.secrets.source_redis_url and target_redis:
        result["redis"] = await _redis_back(ctx, target_redis, ctx.secrets.source_redis_url)
    src = source_place(ctx)
    if src is not None:
        pulled = await copy_tree(target_place(ctx), Place(str(staging_dir(ctx))), delete=False)
        pushed = await copy_tree(Place(str(staging_dir(ctx))), src, delete=False)
        result["files"] = {"pulled": pulled, "pushed": pushed}
    return result


async def _from_reverse_stream(ctx: Context, snapshot: str, exclude: tuple[str, ...]) -> dict[str, Any]:
    """Strategy logical: the rows from the reverse stream ({"via": "reverse stream", …}); otherwise, or when the
    stream cannot tell, {"reverse_stream_unusable": why} and the caller uses the row delta."""
    from timetodo.ops.adapters.postgres.reverse import StreamUnusable
    from timetodo.ops.migrate import logical

    if not logical.requested(ctx):
        return {}
    try:
        async with ctx.activity("rollback: the target's writes from the reverse stream"):
            return await logical.carry_back(ctx, snapshot, exclude)
    except (StreamUnusable, DeltaError) as exc:
        ctx.console.print(f"[yellow]reverse stream not usable, using the row delta:[/] {exc}")
        return {"reverse_stream_unusable": str(exc)}


async def _row_delta(ctx: Context, target_db: str, snapshot: str, exclude: tuple[str, ...]) -> dict[str, Any]:
    """The target's rows changed since the switch, found by its xid horizon (or every row), applied to the source."""
    started = time.monotonic()
    horizon = ctx.state.facts.target_xid_horizon
    async with ctx.activity("rollback: what the target changed since the switch"):
        if horizon is None:  # a cutover of an older version: compare every row
            changes, full = await compute_delta(target_db, snapshot, exclude=exclude), ["*"]
        else:
            changes, full = await compute_delta_since(target_db, snapshot, horizon, exclude=exclude)
    async with ctx.activity(f"rollback: {changes.total} row changes back to the source"):
        applied = await apply_delta(changes, target_db, ctx.secrets.source_database_url, snapshot_url=snapshot)
    return {
        "via": "row delta",
        "delta": changes.to_dict(),
        "applied": applied.to_dict(),
        "compared_in_full": full,
        "seconds": round(time.monotonic() - started, 3),
    }


async def _redis_back(ctx: Context, target_redis: str, source_redis: str) -> dict[str, Any]:
    """The target's Redis keys written since the switch back onto the source: with the record of what the target
    held at the switch (`incremental.cutover_record`), only the keys whose digest changed on the target since —
    written, expired or deleted — are copied or deleted on the source (`copy_redis_since`, the target scanned on its
    server); without one (a `dump` cutover, a resumed in-freeze pass, a Redis without scripts), every target key."""
    from timetodo.ops.migrate.incremental import cutover_record

    found = await asyncio.to_thread(cutover_record, ctx)
    connections = ctx.config.parallel_jobs * 2
    if found is not None:
        record, touched = found
        try:
            async with ctx.activity("rollback: Redis keys the target changed since the switch") as progress:
                since = await redisops.copy_redis_since(
                    target_redis, source_redis, record, connections=connections, progress=progress, also=touched
                )
            return since.to_dict()
        except redisops.ScanScriptRefused as exc:
            log.info(f"rollback: the target refused the digest script ({exc}): every key is copied back")
    async with ctx.activity("rollback: every Redis key of the target back to the source") as progress:
        copied = await redisops.copy_redis(target_redis, source_redis, connections=connections, progress=progress)
    return copied.to_dict()


async def check_source(api: SourceApi, database_url: str, *, switched: bool) -> None:
    """Before anything is stopped: the source answers as an admin, its database accepts a connection, and — after a
    switch — it is still frozen. A source out of maintenance may have taken writes of its own since the switch: the
    rollback would then conflict with them, so it refuses while the target still serves."""
    status = await api.check_admin()
    if switched and not status.get("enabled"):
        raise StepError(
            "the source is out of maintenance mode: it may have taken writes since the switch",
            "nothing was stopped; if the source took no writes, `timetodo maintenance on` there and roll back again",
            EXIT_REFUSED,
        )
    conn = await connect(database_url)
    await conn.close()


async def run(ctx: Context) -> dict[str, Any]:
    """Back to the source with nothing lost: stop the target app, carry every write it accepted after the switch
    back to the source, webhook and DNS back, source out of maintenance."""
    started = time.time()
    switched = ctx.state.facts.switched_at is not None
    await check_source(ctx.source_api(), ctx.secrets.source_database_url, switched=switched)
    # first: a source still forwarding would proxy its clients to a target that is about to stop
    result: dict[str, Any] = {"forwarding_ended": await end_forwarding(ctx)}
    await (await ctx.runtime()).stop()
    from timetodo.ops.migrate.logical import cleanup_quietly

    result["logical"] = await cleanup_quietly(ctx)  # strategy logical: no subscription, publication or slot left
    if ctx.state.facts.switched_at is not None:
        result.update(await _carry_back(ctx))
        result.update(await switch_back(ctx))
    # the reverse stream's slot on the target, carried or not: a slot left there retains its WAL
    result["logical_reverse"] = await cleanup_quietly(ctx, reverse=True)
    await ctx.source_api().maintenance(False)
    ctx.state.data["steps"].pop("cutover", None)
    ctx.state.data["steps"].pop("validate", None)
    ctx.state.forget("switched_at", "freeze_started_at", "cutover_phases", "target_xid_horizon")
    result["seconds"] = round(time.time() - started, 3)
    ctx.console.print(f"[bold]rolled back[/] in {result['seconds']:.1f} s")
    return result
