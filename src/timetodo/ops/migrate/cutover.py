"""Step `cutover` (seed: the second half of run_migration.sh): freeze writes on the source (maintenance mode through
its admin API), final copy, quick verification, switch DNS and the Telegram webhook.

The final copy depends on `strategy`: `dump` stops the target app, dumps and restores the whole database and Redis
again inside the freeze, then starts the app and waits for it. `delta` (the default) keeps the target's app
running but *held* — maintenance on in the target's own `app_state` (each side keeps its own; the copies never
carry it), so it writes nothing — and runs a pre-pass while the source is still live (the chunks, keys and files
changed since sync; it records the chunk hashes and Redis key digests both sides then hold). Inside the freeze it
moves only what changed in the last seconds — the chunks holding rows written since the pre-pass (re-hashed on
both sides, the rest taken from the pre-pass), the Redis keys whose digest on the source differs from the record
of the target, the uploads whose listing differs from the pre-pass's — verifies the copied chunks by their hashes, and *opens* the target: maintenance
off in its database. The snapshot the validation and a rollback compare with is then made outside the freeze, from
the source that stays frozen (forwarding) after the switch.

Opening the held target makes its app serve the final data: its processes read the database on every request,
except three caches, each bounded in time by the target's env — the maintenance flag and the forwarding setting
(`MAINTENANCE_CACHE_SECONDS`), the account states (`AUTH_STATE_CACHE_SECONDS`; a process caches none while it sees
maintenance on, `core.accounts`). The flip waits until `AUTH_STATE_CACHE_SECONDS + MAINTENANCE_CACHE_SECONDS`
have passed since the hold (so no account state read before the hold is still cached), and the switch waits
`core.maintenance.OFF_WITHIN` (50 ms) after the flip: a process that cached the flag *on* reads it again within
that (so no process still answers 503 from a cached flag once clients are sent there). Forwarding on the target is never set (`app_state` is not copied); Redis-held state (refresh-token
revocations, rate limits) is read from Redis on every request, and Redis has had its final copy.

Guarantees: nothing is frozen when the credentials are wrong or the estimate exceeds the downtime budget; anything
failing before the switch (or the budget running out) aborts with the source writable again; each phase is
recorded when done, so a run killed at any point continues with `--resume` to the same end state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from timetodo.core.maintenance import OFF_WITHIN, switch_maintenance
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.rsync import remote_sizes
from timetodo.ops.errors import EXIT_BUDGET, EXIT_VERIFICATION, StepError
from timetodo.ops.migrate.data import row_counts, sizes, source_place, staging_dir
from timetodo.ops.migrate.estimate import FIXED_OVERHEAD_S, frozen_estimate
from timetodo.ops.migrate.rollback.since import xid_horizon
from timetodo.ops.migrate.state import CutoverPhase
from timetodo.ops.migrate.switch import switch
from timetodo.ops.migrate.sync import copy_everything
from timetodo.ops.migrate.validate.canary import plant

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine
    from timetodo.ops.migrate.source_api import SourceApi

log = logging.getLogger("timetodo.ops.migrate")
NAME = "cutover"


async def plan(ctx: Context) -> list[PlanLine]:
    from timetodo.ops.migrate import logical

    dns = ctx.config.dns
    if logical.active(ctx):
        copy = logical.plan_cutover(ctx)
    elif ctx.config.strategy == "delta":
        copy = [
            (ctx.target_ssh().describe(), "maintenance on in the target's database; the app running (held)"),
            ("local", "pre-pass (source live): chunks whose hashes differ, changed Redis keys, rsync delta"),
            (ctx.config.source.api_url, "PUT /api/v1/admin/maintenance on"),
            (
                "local",
                "final pass: re-hash chunks written since the pre-pass, copy differing ones, sequences; Redis "
                "keys whose digest changed; files",
            ),
            ("local", "verify the copied chunks' hashes, key/file counts"),
            (ctx.target_ssh().describe(), "maintenance off in the target's database (the app serves)"),
        ]
    else:
        copy = [
            (ctx.config.source.api_url, "PUT /api/v1/admin/maintenance on"),
            ("local", "final dump/restore, Redis, files"),
            ("local", "verify row/key/file counts"),
            (ctx.target_ssh().describe(), "start the app"),
        ]
    return [
        *copy,
        ("api.telegram.org", "setWebhook (pending updates kept); getWebhookInfo"),
        ("local", "DNS: " + (str(dns.hook) if dns.hook else "print the record to change")),
        *(logical.plan_after_switch(ctx) if logical.active(ctx) else []),
    ]


class Budget:
    def __init__(self, ctx: Context, started: float) -> None:
        self.ctx, self.started = ctx, started
        self.limit = ctx.config.downtime_budget_minutes * 60

    def elapsed(self) -> float:
        return time.time() - self.started

    def check(self, phase: str, still_needed: float = 0.0) -> None:
        if self.elapsed() + still_needed > self.limit:
            raise StepError(
                f"cutover would exceed the downtime budget ({self.limit:.0f} s) at '{phase}': "
                f"{self.elapsed():.0f} s spent, about {still_needed:.0f} s still needed",
                "the source is back out of maintenance; raise downtime_budget_minutes or move less data",
                EXIT_BUDGET,
            )


async def _phase(ctx: Context, name: str, action: Callable[[], Awaitable[Any]]) -> CutoverPhase:
    """Run one cutover phase once: done phases are skipped on --resume."""
    phases = ctx.state.facts.cutover_phases
    if name in phases:
        return phases[name]
    started = time.time()
    value = await action()
    phases[name] = CutoverPhase(started_at=started, ended_at=time.time(), result=value)
    ctx.state.save()
    log.info(f"cutover: {name} done", extra={"seconds": round(time.time() - started, 3)})
    return phases[name]


async def quick_verify(ctx: Context, database: dict[str, Any] | None = None) -> dict[str, Any]:
    """Row counts per table (or, after a delta copy, the hashes of the copied chunks, checked by the copy: given as
    `database`), key counts, file counts: source (frozen) against target, before the switch."""
    if database is not None:
        problems = list(database.get("problems", []))
        rows = int(database.get("rows_source", 0))
    else:
        source_rows = await row_counts(ctx.secrets.source_database_url)
        target_rows = await row_counts(await ctx.target_db_url())
        problems = [
            f"{table}: source {source_rows.get(table)} rows, target {target_rows.get(table)}"
            for table in sorted(set(source_rows) | set(target_rows))
            if table != "alembic_version" and source_rows.get(table) != target_rows.get(table)
        ]
        rows = sum(source_rows.values())
    target_redis = await ctx.target_redis_url()

    async def key_counts() -> dict[str, int]:
        if not (ctx.secrets.source_redis_url and target_redis):
            return {}
        source, target = await asyncio.gather(
            redisops.key_count(ctx.secrets.source_redis_url), redisops.key_count(target_redis)
        )
        return {"source": source, "target": target}

    async def file_sizes() -> tuple[dict[str, int], dict[str, int]] | None:
        if source_place(ctx) is None:
            return None
        # names and sizes only: hashes are compared by validate, outside the freeze
        return await asyncio.gather(
            asyncio.to_thread(sizes, staging_dir(ctx)),
            remote_sizes(await ctx.target(), ctx.config.target_uploads_dir),
        )

    # side by side: the counts and the target's listing are round trips to three hosts, all inside the freeze
    keys, listed = await asyncio.gather(key_counts(), file_sizes())
    # keys expiring between the two counts make a small difference legitimate
    if keys and abs(keys["source"] - keys["target"]) > max(5, keys["source"] // 1000):
        problems.append(f"Redis: source {keys['source']} keys, target {keys['target']}")
    file_counts: dict[str, int] = {}
    if listed is not None:
        staged, on_target = listed
        file_counts = {"source": len(staged), "target": len(on_target)}
        differing = [name for name, size in staged.items() if on_target.get(name) != size]
        if differing:
            problems.append(f"uploads: {len(differing)} missing or of another size on the target")
    return {"rows": rows, "keys": keys, "files": file_counts, "problems": problems}


async def _may_freeze(ctx: Context) -> SourceApi:
    """Refuse (before anything is stopped or frozen) wrong admin credentials or an estimate over the budget."""
    api = ctx.source_api()
    await api.check_admin()  # wrong credentials: refuse before freezing anything
    estimate = frozen_estimate(ctx)
    limit = ctx.config.downtime_budget_minutes * 60
    if estimate["seconds"] > limit:
        raise StepError(
            f"estimated write downtime {estimate['seconds']:.0f} s exceeds the budget {limit:.0f} s",
            "raise downtime_budget_minutes",
            EXIT_BUDGET,
        )
    return api


async def _freeze(ctx: Context) -> float:
    """Maintenance on at the source, its start recorded just before it is asked for (a resumed run finds it recorded
    and asks again until the switch); refused before freezing anything when the credentials are wrong or the
    estimate exceeds the budget. The freeze's start time."""
    if ctx.state.facts.freeze_started_at is None:
        api = await _may_freeze(ctx)
        # recorded before it is asked for: a run killed after the source froze but before a record said so would
        # resume with a later start and understate the freeze (the e2e saw 2 s of refused writes before it)
        ctx.state.remember(freeze_started_at=time.time())
        try:
            await freeze_source(api)
        except Exception:
            ctx.state.forget("freeze_started_at")  # as before: not frozen by this run, the caller reports why
            raise
    elif ctx.state.facts.switched_at is None:
        # resumed: the recorded start may predate a kill before the request reached the source (idempotent)
        await freeze_source(ctx.source_api())
    return float(ctx.state.facts.freeze_started_at or 0)


async def freeze_source(api: SourceApi) -> float:
    """Maintenance on at the source; returns when it was asked for. That is where the write freeze starts: the
    source refuses writes from the moment its flag commits, before its answer gets back here (a slow answer —
    a loaded source — is part of the freeze, not before it)."""
    asked = time.time()
    await api.maintenance(True, "timetodo migrate: moving to a new host")
    return asked


HOLD_REASON = "timetodo migrate: this host takes over at the cutover"


def _held(ctx: Context) -> bool:
    """The target's app runs held (delta: maintenance on in its database) and is opened at the switch, rather than
    stopped for the final copy and started after it."""
    return _delta(ctx) and "hold_target" in ctx.state.facts.cutover_phases


def _cache_seconds(ctx: Context) -> tuple[float, float]:
    """The target app's MAINTENANCE_CACHE_SECONDS and AUTH_STATE_CACHE_SECONDS (its env file; the app's defaults)."""
    from timetodo.ops.migrate.deploy import parse_env_text

    env: dict[str, str] = {}
    path = ctx.config.target.env_file
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            env = {k: v for k, v in parse_env_text(path.read_text()).items() if v is not None}
    values = []
    for name, default in (("MAINTENANCE_CACHE_SECONDS", 1.0), ("AUTH_STATE_CACHE_SECONDS", 5.0)):
        try:
            values.append(max(0.0, float(env.get(name, default))))
        except ValueError:
            values.append(default)
    return values[0], values[1]


async def _hold_target(ctx: Context) -> dict[str, Any]:
    """Before the freeze (delta): maintenance on in the target's database — its app writes nothing (every write
    passes the maintenance guard, the reminder scheduler included) — and the app running and healthy."""
    await switch_maintenance(await ctx.target_db_url(), True, HOLD_REASON)
    await _start_and_wait(ctx)
    return {"maintenance": True}


async def _open_target(ctx: Context, ready: asyncio.Task[Any] | None) -> dict[str, Any]:
    """After the final copy (delta): maintenance off in the target's database, after the waits that make every
    process of its app see the final data (see the module)."""
    if ready is not None:
        await ready
    flag_ttl, auth_ttl = _cache_seconds(ctx)
    held = ctx.state.facts.cutover_phases["hold_target"].ended_at
    waited = max(0.0, held + flag_ttl + auth_ttl - time.time())
    if waited:
        await asyncio.sleep(waited)
    await switch_maintenance(await ctx.target_db_url(), False, None)
    # every process re-reads a cached "on" within OFF_WITHIN (the app this toolkit deploys): no 1 s cache wait
    after = min(flag_ttl, OFF_WITHIN)
    await asyncio.sleep(after)
    return {"maintenance": False, "waited_seconds": round(waited + after, 3)}


def _delta(ctx: Context) -> bool:
    """The delta strategy applies (configured, and the pre-pass found the schemas equal)."""
    if ctx.config.strategy != "delta":
        return False
    pre = ctx.state.facts.cutover_phases.get("pre_pass")
    return not (pre is not None and isinstance(pre.result, dict) and pre.result.get("fallback"))


async def _pre_pass(ctx: Context) -> dict[str, Any]:
    """Before the freeze: what changed since sync, copied while the source is live (the freeze then moves only the
    last seconds' changes). Schemas that differ (a newer release on the target) make the cutover use `dump`."""
    from timetodo.ops.migrate.incremental import SchemaDiffers, copy_delta

    try:
        return await copy_delta(ctx, "pre-pass", live=True)
    except SchemaDiffers as exc:
        log.warning(f"delta strategy not usable, the cutover dumps and restores instead: {exc}")
        return {"fallback": "dump", "reason": str(exc)}


async def _final_copy(ctx: Context) -> dict[str, Any]:
    if _delta(ctx):
        from timetodo.ops.migrate.incremental import copy_delta

        return await copy_delta(ctx, "cutover", live=False)
    return await copy_everything(ctx, ctx.work_dir / "cutover" / "database", "cutover", live=False)


async def _copy_verify_switch(ctx: Context, budget: Budget) -> None:
    runtime = await ctx.runtime()
    budget.check("final copy", frozen_estimate(ctx)["seconds"] - FIXED_OVERHEAD_S)
    held = _held(ctx)
    ready: asyncio.Task[Any] | None = None
    if held:
        # the held app still running and healthy (idempotent start, a health probe), side by side with the copy
        ready = asyncio.create_task(_phase(ctx, "target_ready", lambda: _start_and_wait(ctx)))
    else:
        await _phase(ctx, "stop_target", lambda: runtime.stop())
    try:
        copied = (await _phase(ctx, "final_copy", lambda: _final_copy(ctx))).result
    except BaseException:
        if ready is not None:
            ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
        raise
    budget.check("verification")
    db = copied.get("db") if isinstance(copied, dict) else None
    checked = db if isinstance(db, dict) and db.get("strategy") == "delta" else None
    verification = (await _phase(ctx, "verify", lambda: quick_verify(ctx, checked))).result
    if verification["problems"]:
        ctx.state.facts.cutover_phases.pop("verify", None)
        ctx.state.facts.cutover_phases.pop("final_copy", None)  # a new attempt copies (and checks) again
        if ready is not None:
            ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
        raise StepError(
            "cutover verification failed: " + "; ".join(verification["problems"][:5]),
            "nothing was switched; the source is writable again",
            EXIT_VERIFICATION,
        )
    if ctx.state.facts.target_xid_horizon is None:
        # before the target takes any write (held, its app wrote nothing): a rollback finds every row written after
        # this by its xmin
        ctx.state.remember(target_xid_horizon=await xid_horizon(await ctx.target_db_url()))
    if held:
        await _phase(ctx, "open_target", lambda: _open_target(ctx, ready))
    else:
        await _phase(ctx, "start_target", lambda: _start_and_wait(ctx))
    budget.check("switch")
    await _phase(ctx, "switch", lambda: switch(ctx))
    ctx.state.remember(switched_at=time.time())


async def _plant_canary(ctx: Context) -> None:
    """Before the freeze (once): the canary account on the source, and the source under the validation load mix."""
    settings = ctx.config.validate_
    if not settings.canary or ctx.state.facts.canary is not None or ctx.state.facts.freeze_started_at is not None:
        return
    async with ctx.activity(f"canary: an account on the source, then {settings.load_seconds:g} s of the load mix"):
        planted = await plant(
            ctx.source_api(),
            ctx.work_dir,
            load_seconds=settings.load_seconds,
            load_connections=settings.load_connections,
        )
    if not planted:
        ctx.console.print("[yellow]the source has no account API (an older version): no canary account[/]")
    ctx.state.remember(canary=planted)


async def run(ctx: Context) -> dict[str, Any]:
    """Freeze writes on the source, final copy, quick verification, switch. Aborts (source writable again) when
    anything fails before the switch or the downtime budget would be exceeded."""
    from timetodo.ops.migrate import logical

    if logical.active(ctx):
        return await logical.cutover(ctx)
    await _plant_canary(ctx)
    if ctx.config.strategy == "delta" and ctx.state.facts.freeze_started_at is None:
        # outside the freeze: nobody uses the target yet; then the changes since sync, the source still live
        await _may_freeze(ctx)
        await _phase(ctx, "hold_target", lambda: _hold_target(ctx))
        await _phase(ctx, "pre_pass", lambda: _pre_pass(ctx))
    freeze_started = await _freeze(ctx)
    try:
        if ctx.state.facts.switched_at is None:
            # logged in before the final copy (a resumed run has no token yet): the login's own writes on the
            # source (its rate-limit counters in Redis) are then part of the copy, not a difference after it
            await ctx.source_api().token()
            await _copy_verify_switch(ctx, Budget(ctx, freeze_started))
    except BaseException as exc:
        if ctx.state.facts.switched_at is None and not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            await _abort(ctx, str(exc))
        raise
    facts = ctx.state.facts
    # writes were refused from the freeze until the target took them (DNS switched, the app already healthy)
    downtime = float(facts.writes_switched_at or facts.switched_at or 0) - freeze_started
    ctx.state.remember(write_downtime_seconds=downtime)
    # outside the freeze: the source as it was frozen into a snapshot database, for validation and a lossless rollback
    await _phase(ctx, "snapshot", lambda: _restore_snapshot(ctx))
    ctx.console.print(f"[bold green]switched[/]: writes frozen for {downtime:.1f} s")
    return {
        "write_downtime_seconds": round(downtime, 3),
        "strategy": "delta" if _delta(ctx) else "dump",
        "in_freeze_seconds": in_freeze(ctx),
        "phases": facts.to_json().get("cutover_phases", {}),
    }


def in_freeze(ctx: Context) -> dict[str, float]:
    """Seconds each cutover phase spent inside the write freeze (from the freeze to the switch)."""
    facts = ctx.state.facts
    start, end = facts.freeze_started_at, facts.writes_switched_at or facts.switched_at
    if start is None or end is None:
        return {}
    spent = {
        name: round(min(phase.ended_at, end) - max(phase.started_at, start), 3)
        for name, phase in facts.cutover_phases.items()
    }
    return {name: seconds for name, seconds in spent.items() if seconds > 0}


async def _start_and_wait(ctx: Context) -> dict[str, Any]:
    runtime = await ctx.runtime()
    await runtime.start()
    await runtime.wait_healthy(timeout=120)
    return {"healthy": True}


async def _restore_snapshot(ctx: Context) -> dict[str, Any]:
    """The cutover dump (dump strategy) — or, with delta, a dump of the source now, still frozen (it forwards to the
    target and takes no writes) — restored into the snapshot database."""
    snapshot = await ctx.snapshot_db_url()
    name = snapshot.rsplit("/", 1)[1].split("?")[0]
    dump_dir = ctx.work_dir / "cutover" / "database"
    dumped: dict[str, Any] = {}
    if _delta(ctx):
        async with ctx.activity("snapshot: pg_dump of the frozen source"):
            dumped = await pg.dump_database(ctx.secrets.source_database_url, dump_dir, ctx.config.parallel_jobs)
    await pg.ensure_database(await ctx.target_db_url(), name, recreate=True)
    async with ctx.activity("snapshot: pg_restore into the cutover snapshot database"):
        restored = await pg.restore_database(snapshot, dump_dir, ctx.config.parallel_jobs)
    return {"database": name, **restored, **({"dump": dumped} if dumped else {})}


async def _abort(ctx: Context, reason: str) -> None:
    log.error("cutover aborted: " + reason)
    if "open_target" in ctx.state.facts.cutover_phases:
        # opened but not switched: held again, so its app writes nothing until the next attempt copies again
        try:
            await switch_maintenance(await ctx.target_db_url(), True, HOLD_REASON)
        except Exception:
            log.exception("could not put the target back into maintenance")
    try:
        await ctx.source_api().maintenance(False)
    except Exception:
        log.exception("could not take the source out of maintenance: do it by hand (timetodo maintenance off)")
        raise
    ctx.state.forget("freeze_started_at", "cutover_phases", "target_xid_horizon")
    ctx.console.print("[yellow]cutover aborted; the source is out of maintenance and keeps serving[/]")


__all__ = ["Budget", "plan", "quick_verify", "run"]
