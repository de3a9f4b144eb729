"""The `logical` strategy: the database follows the source through native logical replication, so the write freeze
only waits for the stream to catch up — about the same at 100 MB or 100 GB.

- **preflight** (`preflight_check`): the source qualifies when wal_level = logical, its role has REPLICATION (or is
  a superuser) and may create a publication on its tables, every table has a primary key or a replica identity, and
  a replication slot is free. Otherwise the reasons are shown (Render's managed PostgreSQL: a plan and a support
  ticket) and the migration uses `delta` — recorded in the facts (`logical.fallback`) and the report.
- **sync** (`sync`): the schema (`pg_dump -s`, plus the rows of `alembic_version` and `app_state`), then a
  publication on the source (every table but `app_state` — deployment state, each side keeps its own — and
  `alembic_version`) and a subscription on the target with the initial copy; meanwhile Redis and the uploads are
  copied as in the other strategies. Done when every table is ready and the lag is small. The target's app then
  runs *held* (maintenance on in its own database). A target that cannot reach the source's database (the
  subscription connects from the target's server, to `source.replication_url_env` or the source URL) falls back to
  `delta` there, recorded likewise.
- **cutover** (`cutover`): before the freeze a pre-pass of Redis and the uploads; in the freeze, side by side, the
  fence — the source's current WAL position, confirmed by the subscription's slot (every transaction committed
  before it is then applied on the target) — then every sequence set to the source's value plus a safety gap; and
  the Redis keys and uploads changed since the pre-pass. No row is counted inside the freeze (validate compares the
  frozen source in full, outside it). The target is opened (maintenance off), and once no process can still answer
  from a cached maintenance flag (`MAINTENANCE_CACHE_SECONDS` of the target) the switch runs (forwarding on the
  source, DNS, webhook). Then, outside the freeze: the subscription is dropped (the data stays: the target is on
  its own) and the publication and every slot of ours on the source are removed; then the cutover snapshot.
- **reverse stream** (`_start_reverse`, `carry_back`): in the freeze, after the fence and before the target is
  opened (at the point its xid horizon is recorded), a publication and a `pgoutput` slot on the *target*
  (`adapters.postgres.reverse`): every transaction the target commits from then on is decoded. It needs nothing of
  the source but a normal role (a subscription on the source would need superuser or `pg_create_subscription`,
  which Render does not grant); the target's server needs wal_level = logical (the compose bundle sets it; the
  pre-pass checks it — a target without it is recorded with the reason and the rollback uses the row delta). A
  rollback stops the target (its freeze), reads the slot, carries the named rows' final state to the source in one
  transaction with the sequences moved up, then drops the slot; the row delta is its fallback when the stream
  cannot tell (a TRUNCATE, a slot that lost its WAL), with the reason in the report.
- **cleanup** (`cleanup`): the subscription, publication and replication slots removed, idempotently, from
  whichever side answers — run by a new sync, the detach after the switch, `migrate rollback` and `migrate
  finish` (rollback, finish and a new sync with `reverse=True`: the reverse slot too; the detach leaves it). A slot
  left on a server keeps its WAL until the disk is full (the compose bundle bounds the target's with
  max_slot_wal_keep_size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from timetodo.core.maintenance import OFF_WITHIN, switch_maintenance
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.postgres import replication as repl
from timetodo.ops.adapters.postgres import reverse as rev
from timetodo.ops.adapters.postgres.dump import _run_tool
from timetodo.ops.errors import EXIT_VERIFICATION, OpsError, StepError
from timetodo.ops.migrate.data import connect, copy_changed_files, copy_files

if TYPE_CHECKING:
    from timetodo.ops.migrate.config import MigrationConfig
    from timetodo.ops.migrate.context import Context, PlanLine
    from timetodo.ops.migrate.preflight import Checks
    from timetodo.ops.migrate.state import Facts

log = logging.getLogger("timetodo.ops.migrate")

EXCLUDE = ("app_state", "alembic_version")
"""Not replicated: `app_state` is each side's own (maintenance, forwarding), `alembic_version` is copied once with
the schema (the target's release may upgrade it)."""
HOLD_REASON = "timetodo migrate: this host takes over at the cutover"
REVERSE_START_TIMEOUT = 10.0
"""Seconds the reverse slot's creation may wait, in the freeze, for transactions running on the target (beyond it
the cutover goes on without the reverse stream; a rollback then uses the row delta)."""


# which strategy applies ----------------------------------------------------------------------------------------------
def requested(ctx: Context) -> bool:
    """`strategy = "logical"` was configured (even when the run fell back to delta)."""
    return ctx.config.strategy == "logical" or bool((ctx.state.facts.logical or {}).get("requested"))


def active(ctx: Context) -> bool:
    """This migration replicates: configured, and neither preflight nor sync fell back to delta."""
    return ctx.config.strategy == "logical" and not (ctx.state.facts.logical or {}).get("fallback")


def effective_config(config: MigrationConfig, facts: Facts) -> MigrationConfig:
    """The configuration a run works with: `logical` becomes `delta` once the migration fell back to it."""
    if config.strategy == "logical" and (facts.logical or {}).get("fallback"):
        return config.model_copy(update={"strategy": "delta"})
    return config


def name_of(ctx: Context) -> str:
    """The publication, subscription and slot name: `<app_name>_migrate`, lower case with underscores."""
    return re.sub(r"[^a-z0-9_]", "_", f"{ctx.config.app_name}_migrate".lower())[:63]


def _fall_back(ctx: Context, reason: str) -> None:
    info = dict(ctx.state.facts.logical or {})
    info.update(requested=True, usable=False, fallback="delta", reason=reason)
    ctx.state.remember(logical=info)
    ctx.config = effective_config(ctx.config, ctx.state.facts)
    ctx.console.print(f"[yellow]strategy logical not usable, using delta:[/] {reason}")
    log.warning(f"logical replication not usable, falling back to delta: {reason}")


def replication_url(ctx: Context) -> str:
    """The source database as the target's PostgreSQL server reaches it."""
    return pg.PgTarget.from_url(ctx.secrets.source_replication_url or ctx.secrets.source_database_url).dsn


# preflight -----------------------------------------------------------------------------------------------------------
async def preflight_check(ctx: Context, checks: Checks) -> None:
    """One row: the source qualifies for logical replication, or why not (then the migration uses delta)."""
    if not requested(ctx):
        return
    recorded = ctx.state.facts.logical or {}
    if (pending := reverse_pending(ctx)) is not None and ctx.state.facts.switched_at is not None:
        checks.add(
            "reverse replication slot",
            "warning",
            f"{pending['slot']} on the target keeps its WAL (for a rollback)",
            "`timetodo migrate finish` drops it once the migration is over",
        )
    if ctx.state.is_done("sync") and recorded:
        # sync chose already: the strategy does not change in the middle of a migration
        status = "ok" if not recorded.get("fallback") else "warning"
        checks.add("logical replication", status, recorded.get("reason") or "in use since sync", "")
        return
    try:
        conn = await connect(ctx.secrets.source_database_url)
    except StepError:
        return  # the source database row names it already
    try:
        verdict = await repl.source_qualifies(conn, ctx.secrets.source_database_url, EXCLUDE)
    finally:
        await conn.close()
    # what an interrupted sync recorded (the subscription's oid, for cleanup) stays; the verdict is new
    kept = {k: v for k, v in recorded.items() if k not in ("usable", "fallback", "reason")}
    info: dict[str, Any] = {**kept, "requested": True, "name": name_of(ctx), "source": verdict.to_dict()}
    if verdict.ok:
        detail = (
            f"wal_level logical, role {verdict.details['role']} may publish; {verdict.details['free_slots']} free slots"
        )
        checks.add("logical replication", "ok", detail, "")
        info.update(usable=True)
        ctx.config = ctx.config.model_copy(update={"strategy": "logical"})  # a fallback recorded before is over
        checks.facts["logical"] = info
        ctx.state.remember(logical=info)
        return
    reason = "; ".join(verdict.reasons)
    checks.add("logical replication", "warning", reason, "the migration uses the delta strategy instead")
    info.update(usable=False, fallback="delta", reason=reason)
    checks.facts["logical"] = info
    ctx.state.remember(logical=info)
    ctx.config = effective_config(ctx.config, ctx.state.facts)


# sync ----------------------------------------------------------------------------------------------------------------
def plan_sync(ctx: Context) -> list[PlanLine]:
    target = ctx.target_ssh().describe()
    name = name_of(ctx)
    return [
        (target, "stop the app"),
        ("local", "pg_dump -s source (+ rows of alembic_version, app_state) → pg_restore --clean target"),
        (target, "timetodo db upgrade; maintenance on in the target's database (held)"),
        ("local", f"source: CREATE PUBLICATION {name}; target: CREATE SUBSCRIPTION {name} (initial copy)"),
        ("local", "Redis copy (ABSTTL REPLACE); rsync source → staging → target"),
        ("local", "wait: every table ready in pg_subscription_rel, lag small"),
        (target, "start the app (held); wait healthy"),
    ]


async def _copy_schema(ctx: Context, target_url: str) -> dict[str, Any]:
    """`pg_dump -Fc -s` of the source — with the rows of the excluded tables — restored with --clean."""
    source = pg.PgTarget.from_url(ctx.secrets.source_database_url)
    conn = await connect(ctx.secrets.source_database_url)
    try:
        tables = await pg.list_tables(conn)
    finally:
        await conn.close()
    path = ctx.work_dir / "sync" / "schema.dump"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    args = [pg.tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={path}"]
    args += [f"--exclude-table-data=public.{pg.quote_ident(t)}" for t in tables if t not in EXCLUDE]
    await _run_tool([*args, f"--dbname={source.url}"], source, "pg_dump (schema)")
    target = pg.PgTarget.from_url(target_url)
    restore = [pg.tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges", "--exit-on-error"]
    await _run_tool(
        [*restore, "--single-transaction", f"--dbname={target.url}", str(path)], target, "pg_restore (schema)"
    )
    return {"tables": len(tables), "seconds": round(time.monotonic() - started, 3)}


async def sync(ctx: Context) -> dict[str, Any] | None:
    """The first copy by replication (see the module docstring). None when the target cannot subscribe to the
    source: the migration then falls back to delta and the caller runs that strategy's sync."""
    runtime = await ctx.runtime()
    await runtime.stop()
    name = name_of(ctx)
    target_url = await ctx.target_db_url()
    started = time.monotonic()
    await cleanup(ctx, reverse=True)  # a sync run again starts over
    async with ctx.activity("sync: schema (pg_dump -s → pg_restore)"):
        schema = await _copy_schema(ctx, target_url)
    await switch_maintenance(target_url, True, HOLD_REASON)  # held: its app takes no write until the cutover opens it
    await runtime.migrate_db()
    source = await connect(ctx.secrets.source_database_url)
    target = await connect(target_url)
    try:
        tables = await repl.publish(source, name, EXCLUDE)
        try:
            await repl.subscribe(target, name, replication_url(ctx))
        except repl.ReplicationError as exc:
            await repl.drop_publication(source, name)
            _fall_back(ctx, f"{exc} (the subscription runs on the target's server; set source.replication_url_env)")
            return None
        oid = await repl.subscription_oid(target, name)
        ctx.state.remember(logical={**(ctx.state.facts.logical or {}), "name": name, "subscription_oid": oid})

        async def database() -> dict[str, Any]:
            async with ctx.activity(f"sync: logical replication, initial copy of {len(tables)} tables") as progress:
                ready = await repl.wait_ready(source, target, name, progress=progress)
            size = int(await target.fetchval("SELECT pg_database_size(current_database())"))
            return {"strategy": "logical", "tables": len(tables), "bytes": size, "schema": schema, **ready}

        async def keys() -> dict[str, Any]:
            target_redis = await ctx.target_redis_url()
            if not (ctx.secrets.source_redis_url and target_redis):
                return {}
            jobs = ctx.config.parallel_jobs
            async with ctx.activity("sync: Redis keys (DUMP → RESTORE ABSTTL)") as progress:
                copied = await redisops.copy_redis(
                    ctx.secrets.source_redis_url,
                    target_redis,
                    connections=jobs * 2,
                    flush_target=True,
                    progress=progress,
                )
            return copied.to_dict()

        db, redis_result, files = await asyncio.gather(database(), keys(), copy_files(ctx, live=True))
    finally:
        await source.close()
        await target.close()
    await runtime.start()
    await runtime.wait_healthy(timeout=300)
    return {"db": db, "redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


# cutover -------------------------------------------------------------------------------------------------------------
def plan_cutover(ctx: Context) -> list[PlanLine]:
    return [
        ("local", "pre-pass (source live): changed Redis keys, rsync delta; the subscription caught up"),
        (ctx.config.source.api_url, "PUT /api/v1/admin/maintenance on"),
        ("local", "fence: source pg_current_wal_lsn() confirmed by the subscription's slot; sequences + gap"),
        (ctx.target_ssh().describe(), "maintenance off in the target's database (the app serves)"),
        ("local", "changed Redis keys, rsync delta; key/file counts"),
    ]


def plan_after_switch(ctx: Context) -> list[PlanLine]:
    name = name_of(ctx)
    return [
        ("local", f"DROP SUBSCRIPTION {name} (target); DROP PUBLICATION {name} + its slots (source)"),
        ("local", f"kept until `migrate finish` / rollback: slot + publication {rev.slot_name(name)} (target)"),
    ]


async def _keys_and_files(ctx: Context, label: str, *, live: bool) -> dict[str, Any]:
    from timetodo.ops.migrate.incremental import copy_keys  # the Redis part is delta's (record, then digests)

    started = time.monotonic()
    redis_result, files = await asyncio.gather(copy_keys(ctx, label, live=live), copy_changed_files(ctx, live=live))
    return {"redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


async def _replicating(ctx: Context) -> dict[str, Any]:
    """Before the freeze: the subscription exists, every table is ready, the lag is small (else the cutover is
    refused with the source untouched)."""
    name = name_of(ctx)
    source = await connect(ctx.secrets.source_database_url)
    target = await connect(await ctx.target_db_url())
    try:
        return await repl.wait_ready(source, target, name, limit_seconds=120)
    except repl.ReplicationError as exc:
        raise StepError(f"logical replication is not ready: {exc}", "run `timetodo migrate sync` again") from None
    finally:
        await source.close()
        await target.close()


async def _reverse_check(ctx: Context) -> list[str]:
    """Before the freeze: why the target's server cannot hold the reverse stream's slot (empty: it can)."""
    target = await connect(await ctx.target_db_url())
    try:
        return await rev.reverse_qualifies(target)
    finally:
        await target.close()


async def _pre_pass(ctx: Context) -> dict[str, Any]:
    ready, moved, reasons = await asyncio.gather(
        _replicating(ctx), _keys_and_files(ctx, "pre-pass", live=True), _reverse_check(ctx)
    )
    return {"db": {"strategy": "logical", **ready}, **moved, "reverse": {"usable": not reasons, "reasons": reasons}}


async def _start_reverse(ctx: Context) -> dict[str, Any]:
    """In the freeze, before the target takes a write: the reverse stream's publication and slot on the target
    (every transaction the target commits afterwards is decoded). Recorded in `facts.logical["reverse"]`; a target
    that cannot hold it is recorded with the reason (a rollback then uses the row delta) — the cutover goes on."""
    pre = ctx.state.facts.cutover_phases.get("pre_pass")
    reasons = list(((pre.result or {}).get("reverse") or {}).get("reasons", [])) if pre is not None else []
    info: dict[str, Any]
    if reasons:
        info = {"usable": False, "reason": "; ".join(reasons)}
    else:
        target = await connect(await ctx.target_db_url())
        try:
            # a logical slot waits for the transactions running on the target: never for long inside the freeze
            await target.execute(f"SET statement_timeout = '{int(REVERSE_START_TIMEOUT * 1000)}ms'")
            tables = [t for t in await pg.list_tables(target) if t not in EXCLUDE]
            info = {"usable": True, **await rev.start(target, name_of(ctx), tables)}
        except asyncpg.PostgresError as exc:
            info = {"usable": False, "reason": f"the reverse slot could not be created on the target: {exc}"}
        finally:
            await target.close()
    if not info["usable"]:
        log.warning(f"no reverse replication, a rollback will use the row delta: {info['reason']}")
    ctx.state.remember(logical={**(ctx.state.facts.logical or {}), "reverse": info})
    return info


async def _catch_up(ctx: Context, source: asyncpg.Connection, target: asyncpg.Connection) -> dict[str, Any]:
    """In the freeze: the source's WAL position confirmed by the subscription, then the sequences (on connections
    opened before the freeze)."""
    name = name_of(ctx)
    started = time.monotonic()
    fence = await repl.fence_lsn(source)
    # the tables' states (ready since the pre-pass) read on the target while the source's slot is polled
    waited, states = await asyncio.gather(repl.wait_flushed(source, name, fence), repl.table_states(target, name))
    sequences = await repl.set_sequences(source, target)
    problems = [f"{table}: subscription state {state}, not ready" for table, state in states.items() if state != "r"]
    return {
        "strategy": "logical",
        "fence_lsn": fence,
        "fence_seconds": round(waited, 3),
        "sequences": len(sequences),
        "sequence_gap": repl.SEQUENCE_GAP,
        "problems": problems,
        "seconds": round(time.monotonic() - started, 3),
    }


def _cache_seconds(ctx: Context) -> float:
    """The target app's MAINTENANCE_CACHE_SECONDS (its env file; the app's default 1 s)."""
    from timetodo.ops.migrate.deploy.runtime import parse_env_text

    env_file = ctx.config.target.env_file
    try:
        value = parse_env_text(env_file.read_text()).get("MAINTENANCE_CACHE_SECONDS") if env_file else None
        return max(0.0, float(value)) if value else 1.0
    except (OSError, OpsError, ValueError):
        return 1.0


async def _open_target(ctx: Context) -> dict[str, Any]:
    await switch_maintenance(await ctx.target_db_url(), False, None)
    return {"opened": True}


async def _hold_target(ctx: Context) -> None:
    """An aborted cutover: the target takes no writes again (the source does)."""
    if "open_target" in ctx.state.facts.cutover_phases:
        await switch_maintenance(await ctx.target_db_url(), True, HOLD_REASON)


async def _in_freeze(ctx: Context, source: asyncpg.Connection, target: asyncpg.Connection) -> None:
    """Side by side: (a) the fence + sequences, the target opened at once (no client reaches it before the switch)
    and its processes' cached maintenance flag left to expire; (b) the Redis keys and uploads changed since the
    pre-pass, then their counts. Then the switch."""
    from timetodo.ops.migrate.cutover import _phase, quick_verify
    from timetodo.ops.migrate.rollback.since import xid_horizon
    from timetodo.ops.migrate.switch import switch

    phases = ctx.state.facts.cutover_phases
    if "final_copy" in phases:
        # a resumed run: the source's Redis may have changed after that copy (the new run logged in): again
        for name in ("final_copy", "verify"):
            phases.pop(name, None)

    async def stream() -> None:
        caught_up = (await _phase(ctx, "catch_up", lambda: _catch_up(ctx, source, target))).result
        if caught_up["problems"]:
            phases.pop("catch_up", None)
            raise StepError(
                "logical replication did not catch up: " + "; ".join(caught_up["problems"][:5]),
                "nothing was switched; the source is writable again",
                EXIT_VERIFICATION,
            )
        if ctx.state.facts.target_xid_horizon is None:
            # before the target takes a write (the stream has caught up; anything it still applies is compared too):
            # the reverse stream starts, and a rollback without it finds every row written after this by its xmin
            await _start_reverse(ctx)
            ctx.state.remember(target_xid_horizon=await xid_horizon(await ctx.target_db_url()))
        opened = await _phase(ctx, "open_target", lambda: _open_target(ctx))
        # no process of the target may still answer 503 from a maintenance flag it cached before the opening
        wait = opened.ended_at + min(_cache_seconds(ctx), OFF_WITHIN) - time.time()  # a cached "on" is re-read
        if wait > 0:
            await asyncio.sleep(wait)

    async def rest() -> None:
        await _phase(ctx, "final_copy", lambda: _keys_and_files(ctx, "cutover", live=False))
        database = {"problems": [], "rows_source": 0}
        verification = (await _phase(ctx, "verify", lambda: quick_verify(ctx, database))).result
        if verification["problems"]:
            for name in ("verify", "final_copy"):
                phases.pop(name, None)
            raise StepError(
                "cutover verification failed: " + "; ".join(verification["problems"][:5]),
                "nothing was switched; the source is writable again",
                EXIT_VERIFICATION,
            )

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(stream())
            group.create_task(rest())
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    await _phase(ctx, "switch", lambda: switch(ctx))
    ctx.state.remember(switched_at=time.time())


async def cutover(ctx: Context) -> dict[str, Any]:
    """Freeze, fence + sequences, keys and files, open the target, switch; then detach and the snapshot."""
    from timetodo.ops.migrate.cutover import _abort, _freeze, _may_freeze, _phase, _plant_canary, in_freeze

    await _plant_canary(ctx)
    if ctx.state.facts.freeze_started_at is None:
        await _may_freeze(ctx)
        await _phase(ctx, "pre_pass", lambda: _pre_pass(ctx))
    # the SSH tunnels and the connections of the fence open before the freeze, not in it
    await ctx.target_redis_url()
    source = await connect(ctx.secrets.source_database_url)
    target = await connect(await ctx.target_db_url())
    try:
        freeze_started = await _freeze(ctx)
        try:
            if ctx.state.facts.switched_at is None:
                await _in_freeze(ctx, source, target)
        except BaseException as exc:
            switched = ctx.state.facts.switched_at is not None
            if not switched and not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                with contextlib.suppress(Exception):
                    await _hold_target(ctx)  # before the source takes writes again
                await _abort(ctx, str(exc))
            raise
    finally:
        await source.close()
        await target.close()
    facts = ctx.state.facts
    downtime = float(facts.writes_switched_at or facts.switched_at or 0) - freeze_started
    ctx.state.remember(write_downtime_seconds=downtime)
    detached = await _phase(ctx, "detach", lambda: cleanup(ctx))
    await _phase(ctx, "snapshot", lambda: _snapshot(ctx))
    ctx.console.print(f"[bold green]switched[/]: writes frozen for {downtime:.2f} s (logical replication)")
    if (pending := reverse_pending(ctx)) is not None:
        ctx.console.print(
            f"reverse replication: slot {pending['slot']} on the target records its writes for a rollback; it keeps "
            "the target's WAL until `timetodo migrate finish` or `timetodo migrate rollback` drops it"
        )
    return {
        "write_downtime_seconds": round(downtime, 3),
        "strategy": "logical",
        "in_freeze_seconds": in_freeze(ctx),
        "detached": detached.result,
        "phases": facts.to_json().get("cutover_phases", {}),
    }


async def _snapshot(ctx: Context) -> dict[str, Any]:
    """Outside the freeze: the frozen source dumped into the cutover snapshot database (validation, rollback)."""
    snapshot = await ctx.snapshot_db_url()
    name = snapshot.rsplit("/", 1)[1].split("?")[0]
    dump_dir = ctx.work_dir / "cutover" / "database"
    async with ctx.activity("snapshot: pg_dump of the frozen source"):
        dumped = await pg.dump_database(ctx.secrets.source_database_url, dump_dir, ctx.config.parallel_jobs)
    await pg.ensure_database(await ctx.target_db_url(), name, recreate=True)
    async with ctx.activity("snapshot: pg_restore into the cutover snapshot database"):
        restored = await pg.restore_database(snapshot, dump_dir, ctx.config.parallel_jobs)
    return {"database": name, **restored, "dump": dumped}


# cleanup -------------------------------------------------------------------------------------------------------------
async def cleanup(ctx: Context, *, reverse: bool = False) -> dict[str, Any]:
    """Our subscription off the target (its data kept), our publication and replication slots off the source; with
    `reverse`, the reverse stream's slot and publication off the target too (not at the switch: a rollback reads
    it). Idempotent; each side is cleaned even when the other does not answer. Raises when the source could not be
    cleaned (a slot might remain there): the caller must not pretend it is gone."""
    if not requested(ctx):
        return {}
    name = name_of(ctx)
    oid = (ctx.state.facts.logical or {}).get("subscription_oid")
    result: dict[str, Any] = {"name": name}
    try:
        target = await connect(await ctx.target_db_url())
        try:
            oid = await repl.subscription_oid(target, name) or oid
            result["target"] = await repl.drop_subscription(target, name)
            if reverse:
                result["reverse"] = await _drop_reverse_on(ctx, target)
        finally:
            await target.close()
    except (OpsError, OSError) as exc:
        # the target is gone: its subscription goes with it; the slot on the source is dropped below
        result["target"] = {"error": str(exc)}
    source = await connect(ctx.secrets.source_database_url)
    try:
        result["source"] = await repl.drop_publication(source, name, oid)
        left = await repl.leftovers(source, name)
    finally:
        await source.close()
    if left["publication"] or left["slots"]:
        raise StepError(f"logical replication leftovers on the source: {left}", "drop them by hand")
    info = dict(ctx.state.facts.logical or {})
    info["cleaned_at"] = time.time()
    ctx.state.remember(logical=info)
    return result


async def _drop_reverse_on(ctx: Context, target: asyncpg.Connection) -> dict[str, Any]:
    dropped = await rev.drop(target, name_of(ctx))
    info = dict(ctx.state.facts.logical or {})
    if "reverse" in info:
        info["reverse"] = {**info["reverse"], "dropped_at": time.time()}
        ctx.state.remember(logical=info)
    return dropped


async def drop_reverse(ctx: Context) -> dict[str, Any]:
    """The reverse stream's slot and publication off the target (after a rollback carried it, or when the
    migration is finished). Idempotent."""
    if not requested(ctx):
        return {}
    target = await connect(await ctx.target_db_url())
    try:
        return await _drop_reverse_on(ctx, target)
    finally:
        await target.close()


def reverse_pending(ctx: Context) -> dict[str, Any] | None:
    """The reverse stream recorded at the switch and not dropped yet (its slot retains the target's WAL)."""
    info = (ctx.state.facts.logical or {}).get("reverse") or {}
    return info if info.get("usable") and not info.get("dropped_at") else None


async def carry_back(ctx: Context, snapshot_url: str | None, exclude: tuple[str, ...]) -> dict[str, Any]:
    """Rollback of a logical migration: the target's writes since the switch back on the source, from the reverse
    stream. Raises `StreamUnusable` (with the reason) when there is none or it cannot tell: the caller then uses the
    row delta."""
    from timetodo.ops.migrate.rollback.reverse import carry_back_stream

    info = (ctx.state.facts.logical or {}).get("reverse") or {}
    if not info:
        raise rev.StreamUnusable("no reverse stream was started at the switch")
    if not info.get("usable"):
        raise rev.StreamUnusable(str(info.get("reason") or "the reverse stream was not usable at the switch"))
    if info.get("dropped_at"):
        raise rev.StreamUnusable("the reverse stream was dropped already")
    return await carry_back_stream(
        await ctx.target_db_url(),
        ctx.secrets.source_database_url,
        name_of(ctx),
        snapshot_url=snapshot_url,
        exclude=exclude,
    )


async def cleanup_quietly(ctx: Context, *, reverse: bool = False) -> dict[str, Any]:
    """`cleanup` for rollback and finish: a failure is reported, never fatal to the caller."""
    try:
        return await cleanup(ctx, reverse=reverse)
    except Exception as exc:
        log.error(f"logical replication cleanup failed: {exc}")
        ctx.console.print(f"[red]logical replication cleanup failed[/]: {exc} — drop the slot on the source by hand")
        return {"error": str(exc)}


__all__ = [
    "EXCLUDE",
    "active",
    "carry_back",
    "cleanup",
    "cleanup_quietly",
    "cutover",
    "drop_reverse",
    "effective_config",
    "name_of",
    "plan_cutover",
    "plan_sync",
    "preflight_check",
    "requested",
    "reverse_pending",
    "sync",
]
