"""The write-freeze estimate preflight shows and cutover checks against the downtime budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context

# Reference throughput on a small VPS over loopback-class links (INFRA-NOTES): used only before sync has measured.
REFERENCE_DB_BYTES_PER_S = 40e6
REFERENCE_KEYS_PER_S = 40_000
REFERENCE_FILE_BYTES_PER_S = 100e6
FIXED_OVERHEAD_S = 15.0


def estimate_downtime(ctx: Context, db_bytes: int, keys: int, files_bytes: int) -> dict[str, Any]:
    """Write-freeze estimate: measured by sync when it ran (a final pass costs what a full one did, files aside),
    else from reference throughput."""
    measured = ctx.state.result("sync")
    chunk_map = (measured or {}).get("chunk_map") or {}
    if ctx.config.strategy == "logical":
        # inside the freeze: the stream catching up (sync left it caught up) and the Redis keys / uploads changed
        # since the pre-pass; bounded by what a full Redis pass takes — not by the database's size
        redis_seconds = (measured or {}).get("redis", {}).get("seconds", keys / REFERENCE_KEYS_PER_S)
        return {"seconds": float(redis_seconds) + 1.0 + FIXED_OVERHEAD_S, "basis": "logical: the stream catches up"}
    if ctx.config.strategy == "delta" and "hash_seconds" in chunk_map:
        # inside the freeze: one hashing pass of both sides (sync timed it) and a second SCAN of Redis comparing
        # every key (about what its copy took); the rows, keys and files that changed in the last seconds aside
        seconds = max(float(chunk_map["hash_seconds"]), float((measured or {}).get("redis", {}).get("seconds", 0)))
        return {"seconds": seconds + FIXED_OVERHEAD_S, "basis": "delta: measured by sync"}
    if measured:
        if "wall_seconds" in measured:  # database, Redis and files copied side by side
            seconds = float(measured["wall_seconds"])
        else:
            seconds = float(measured["db"]["dump_seconds"]) + float(measured["db"]["restore_seconds"])
            seconds += float(measured["redis"].get("seconds", 0)) + float(measured["files"].get("seconds", 0))
        return {"seconds": seconds + FIXED_OVERHEAD_S, "basis": "measured by sync"}
    seconds = 2 * db_bytes / REFERENCE_DB_BYTES_PER_S + keys / REFERENCE_KEYS_PER_S
    seconds += files_bytes / REFERENCE_FILE_BYTES_PER_S + FIXED_OVERHEAD_S
    return {"seconds": seconds, "basis": "reference throughput; sync measures it"}


def frozen_estimate(ctx: Context) -> dict[str, Any]:
    """The estimate for the final copy of a cutover, from what preflight measured (files move incrementally)."""
    return estimate_downtime(ctx, ctx.state.facts.db_bytes or 0, ctx.state.facts.keys or 0, 0)
