"""The steps of `timetodo migrate`: preflight, backup, prepare, deploy, sync, cutover, validate, rollback.

Every step is idempotent and records its result in the state file; cutover records each of its phases, so a run
killed at any point continues with `--resume` to the same end state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from rich.table import Table

from timetodo.ops import files as fileops
from timetodo.ops import postgres as pg
from timetodo.ops import redis as redisops
from timetodo.ops.migration import copy
from timetodo.ops.migration.context import Context
from timetodo.ops.migration.copy import CopyError, Place
from timetodo.ops.migration.errors import EXIT_BUDGET, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_VERIFICATION, StepError

log = logging.getLogger("timetodo.ops.migrate")
# Reference throughput on a small VPS over loopback-class links (INFRA-NOTES): used only before sync has measured.
REFERENCE_DB_BYTES_PER_S = 40e6
REFERENCE_KEYS_PER_S = 40_000
REFERENCE_FILE_BYTES_PER_S = 100e6
FIXED_OVERHEAD_S = 15.0


# ------------------------------------------------------------------------------------------------------- helpers


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await pg.connect(pg.PgTarget.from_url(url))
    except pg.PgUnreachable as exc:
        raise StepError(
            str(exc), "check the database URL and that the server accepts this machine", EXIT_UNREACHABLE
        ) from None


async def row_counts(url: str) -> dict[str, int]:
    conn = await _connect(url)
    try:
        return await pg.count_rows(conn)
    finally:
        await conn.close()


def _sizes(root: Path) -> dict[str, int]:
    return {entry.relpath: entry.path.stat().st_size for entry in fileops.iter_files(root)}


def staging_dir(ctx: Context) -> Path:
    return ctx.work_dir / "staging" / "uploads"


def source_place(ctx: Context) -> Place | None:
    uploads = ctx.config.source.uploads
    if uploads is None:
        return None
    return Place(uploads.path, ctx.source_files_ssh())


def target_place(ctx: Context) -> Place:
    return Place(ctx.config.target_uploads_dir, ctx.target_ssh())


async def pull_files(ctx: Context) -> dict[str, Any] | None:
    """source uploads → local staging (incremental); None when no source uploads are configured."""
    src = source_place(ctx)
    if src is None:
        return None
    async with ctx.activity("uploads: source → staging (rsync)"):
        return await copy.rsync(src, Place(str(staging_dir(ctx))))


async def copy_files(ctx: Context) -> dict[str, Any]:
    """source uploads → local staging → target uploads (incremental both hops; --delete keeps them exact)."""
    pull = await pull_files(ctx)
    if pull is None:
        return {"files": 0, "bytes": 0, "seconds": 0.0, "skipped": "no source.uploads configured"}
    async with ctx.activity("uploads: staging → target (rsync)"):
        push = await copy.rsync(Place(str(staging_dir(ctx))), target_place(ctx))
    if ctx.config.target.runtime == "compose":
        # bound into the app containers (UPLOADS_PATH), which run as the image's user
        await (await ctx.target()).run(["chown", "-R", "10001:10001", ctx.config.target_uploads_dir], timeout=600)
    return {
        "files": push["files"],
        "bytes": push["bytes"],
        "pulled": pull,
        "seconds": pull["seconds"] + push["seconds"],
    }


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


# ----------------------------------------------------------------------------------------------------- preflight


async def preflight(ctx: Context) -> dict[str, Any]:
    """Reachability, versions, sizes, free disk, tables without a primary key, the downtime estimate."""
    checks: list[dict[str, str]] = []

    def check(name: str, status: str, detail: str, fix: str = "") -> None:
        checks.append({"check": name, "status": status, "detail": detail, "fix": fix})

    facts: dict[str, Any] = {}
    api = ctx.source_api()
    if await api.health():
        check("source API", "ok", ctx.config.source.api_url)
        try:
            await api.check_admin()
            check("source admin access", "ok", "can switch maintenance mode")
        except StepError as exc:
            check("source admin access", "blocker", str(exc), exc.hint)
    else:
        check(
            "source API", "blocker", f"{ctx.config.source.api_url}/health does not answer 200", "check source.api_url"
        )

    db_bytes = 0
    try:
        conn = await _connect(ctx.secrets.source_database_url)
        try:
            major = int(await conn.fetchval("SHOW server_version_num")) // 10000
            db_bytes = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
            no_pk = [
                r["relname"]
                for r in await conn.fetch(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_constraint k "
                    "WHERE k.conrelid = c.oid AND k.contype = 'p') ORDER BY 1"
                )
            ]
        finally:
            await conn.close()
        check("source database", "ok", f"PostgreSQL {major}, {_mb(db_bytes)}")
        local_major = await copy.pg_dump_major()
        if local_major < major:
            check(
                "pg_dump version",
                "blocker",
                f"pg_dump {local_major} < server {major}",
                f"install postgresql-client-{major} (or set TIMETODO_PG_BIN)",
            )
        else:
            check("pg_dump version", "ok", f"pg_dump {local_major} ≥ server {major}")
        if no_pk:
            check(
                "primary keys",
                "warning",
                f"tables without a primary key: {', '.join(no_pk)}",
                "they are copied, but validation compares them as whole tables and rollback cannot diff them",
            )
        facts.update(source_pg_major=major, db_bytes=db_bytes, tables_without_pk=no_pk)
    except StepError as exc:
        check("source database", "blocker", str(exc), exc.hint)

    keys = 0
    if ctx.secrets.source_redis_url:
        try:
            engine, version = await copy.redis_version(ctx.secrets.source_redis_url)
            keys = await redisops.key_count(ctx.secrets.source_redis_url)
            check("source Redis", "ok", f"{engine} {version}, {keys:,} keys")
            facts.update(source_redis=f"{engine} {version}", keys=keys)
        except CopyError as exc:
            check("source Redis", "blocker", str(exc), "check the variable named in source.redis_url_env")

    files_bytes = files_count = 0
    place = source_place(ctx)
    if place is not None:
        try:
            transport = await ctx.source_files()
            result = await transport.run(
                f"du -sb {place.path} 2>/dev/null | cut -f1; find {place.path} -type f 2>/dev/null | wc -l",
                timeout=600,
                check=False,
            )
            numbers = [int(x) for x in result.stdout.split() if x.isdigit()]
            files_bytes, files_count = [*numbers, 0, 0][:2]
            check("source uploads", "ok", f"{files_count:,} files, {_mb(files_bytes)} in {place.path}")
        except Exception as exc:
            check("source uploads", "blocker", f"{type(exc).__name__}: {exc}", getattr(exc, "hint", ""))
    facts.update(files_bytes=files_bytes, files=files_count)

    try:
        target = await ctx.target()
        release = await target.run("cat /etc/os-release 2>/dev/null | grep ^PRETTY_NAME= || uname -sr", timeout=30)
        check("target SSH", "ok", f"{target.describe()}: {release.stdout.strip().removeprefix('PRETTY_NAME=')}")
        free = await target.free_bytes(ctx.config.app_dir)
        need = 2 * (db_bytes + files_bytes)
        status = "ok" if free >= need else "blocker"
        check(
            "target free disk",
            status,
            f"{_mb(free)} free, {_mb(need)} needed (2× data)",
            "" if status == "ok" else "grow the disk or clean it up",
        )
        facts.update(target_free_bytes=free)
    except Exception as exc:
        check("target SSH", "blocker", str(exc), getattr(exc, "hint", "check target.host/port/user/key_file"))

    if ctx.secrets.target_redis_url and ctx.secrets.source_redis_url and "source_redis" in facts:
        try:
            engine, version = await copy.redis_version(str(await ctx.target_redis_url()))
            src_engine, src_version = str(facts["source_redis"]).split(" ", 1)
            compatible = copy.restore_compatible(src_engine, src_version, engine, version)
            check(
                "target Redis",
                "ok" if compatible else "blocker",
                f"{engine} {version}",
                "" if compatible else f"the target needs {src_engine} ≥ {src_version} to RESTORE the source's keys",
            )
        except Exception as exc:
            status = "blocker" if ctx.state.is_done("deploy") else "warning"
            check("target Redis", status, f"not reachable yet: {exc}", "deploy starts it")

    estimate = estimate_downtime(ctx, db_bytes, keys, files_bytes)
    budget = ctx.config.downtime_budget_minutes * 60
    check(
        "downtime estimate",
        "ok" if estimate["seconds"] <= budget else "blocker",
        f"{estimate['seconds']:.0f} s ({estimate['basis']}), budget {budget:.0f} s",
        "" if estimate["seconds"] <= budget else "raise downtime_budget_minutes or shrink the data",
    )

    ctx.console.print(
        _table(
            "preflight",
            ["check", "status", "detail", "fix"],
            [[c["check"], c["status"], c["detail"], c["fix"]] for c in checks],
        )
    )
    outcome: dict[str, Any] = {"checks": checks, "facts": facts, "estimate": estimate}
    ctx.state.remember(**facts)
    blockers = [c for c in checks if c["status"] == "blocker"]
    if blockers:
        first = blockers[0]
        raise StepError(f"preflight: {first['check']}: {first['detail']}", first["fix"], EXIT_REFUSED)
    return outcome


def estimate_downtime(ctx: Context, db_bytes: int, keys: int, files_bytes: int) -> dict[str, Any]:
    """Write-freeze estimate: measured by sync when it ran (a final pass costs what a full one did, files aside),
    else from reference throughput."""
    measured = ctx.state.data["steps"]["sync"].get("result") if ctx.state.is_done("sync") else None
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


# -------------------------------------------------------------------------------------------------------- backup


async def backup(ctx: Context) -> dict[str, Any]:
    """`backups/<timestamp>/`: database (pg_dump -Fd), Redis (every key with its TTL), uploads, manifest.json."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    directory = ctx.work_dir / "backups" / stamp
    async with ctx.activity("backup: pg_dump -Fd"):
        db = await copy.dump_database(ctx.secrets.source_database_url, directory / "database", ctx.config.parallel_jobs)
    counts = await row_counts(ctx.secrets.source_database_url)
    redis_info: dict[str, Any] = {}
    if ctx.secrets.source_redis_url:
        with (directory / "redis.jsonl").open("wb") as fh:
            stats = await redisops.dump_keys(ctx.secrets.source_redis_url, fh.write)
        redis_info = {"keys": stats.keys, "skipped": stats.skipped}
    place = source_place(ctx)
    files_info: dict[str, Any] = {}
    if place is not None:
        async with ctx.activity("backup: uploads (rsync)"):
            files_info = await copy.rsync(place, Place(str(directory / "uploads")), delete=True)
        files_info["count"] = len(fileops.scan_tree(directory / "uploads"))
    manifest_files = await asyncio.to_thread(
        lambda: {entry.relpath: fileops.hash_file(entry.path)[0] for entry in fileops.iter_files(directory, ())}
    )
    manifest = {
        "created_at": stamp,
        "source": {"api_url": ctx.config.source.api_url},
        "database": {"format": "pg_dump directory", "bytes": db["bytes"], "rows": counts},
        "redis": redis_info,
        "uploads": files_info,
        "sha256": manifest_files,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.console.print(f"backup written to {directory} ({len(manifest_files)} files)")
    return {
        "directory": str(directory),
        "rows": sum(counts.values()),
        "keys": redis_info.get("keys", 0),
        "files": files_info.get("count", 0),
        "bytes": db["bytes"],
    }


# ------------------------------------------------------------------------------------------------ prepare/deploy


async def prepare(ctx: Context) -> dict[str, Any]:
    target = await ctx.target()
    if ctx.config.target.runtime == "process":
        await target.run(["mkdir", "-p", ctx.config.app_dir, ctx.config.target_uploads_dir], timeout=60)
        return {"runtime": "process", "note": "no container engine: app directory ensured only"}
    from timetodo.ops.prepare import prepare_script, run_prepare

    result = await run_prepare(target, prepare_script(app_dir=ctx.config.app_dir, ssh_port=ctx.config.target.port))
    result.render(ctx.console)
    if result.failed:
        raise StepError(f"prepare: {len(result.failed)} item(s) failed on the target", "see the table above")
    return dict(result.to_dict())


def env_text(ctx: Context) -> str:
    path = ctx.config.target.env_file
    if path is None:
        raise StepError("target.env_file is not set", "write the target's .env (see deploy/.env.example)")
    try:
        return path.expanduser().read_text()
    except OSError as exc:
        raise StepError(f"target.env_file: cannot read {path}: {exc.strerror}") from None


async def deploy(ctx: Context) -> dict[str, Any]:
    runtime = await ctx.runtime()
    result = await runtime.deploy(env_text(ctx))
    await runtime.wait_healthy(timeout=300)
    return dict(result.to_dict()) if hasattr(result, "to_dict") else {"deployed": True}


# ---------------------------------------------------------------------------------------------------------- sync


async def _copy_everything(ctx: Context, dump_dir: Path, label: str) -> dict[str, Any]:
    """Database, Redis and files from the source onto the target (whose app is stopped meanwhile). The three are
    independent and run side by side: the freeze lasts as long as the slowest, not the sum."""
    runtime = await ctx.runtime()
    target_db = await ctx.target_db_url()
    target_redis = await ctx.target_redis_url()
    started = time.monotonic()

    async def database() -> dict[str, Any]:
        async with ctx.activity(f"{label}: pg_dump -Fd -j{ctx.config.parallel_jobs} (source)"):
            dumped = await copy.dump_database(ctx.secrets.source_database_url, dump_dir, ctx.config.parallel_jobs)
        log.info(f"{label}: database dumped", extra=dumped)
        async with ctx.activity(f"{label}: pg_restore -j{ctx.config.parallel_jobs} (target)"):
            restored = await copy.restore_database(target_db, dump_dir, ctx.config.parallel_jobs)
        await writable(target_db)
        await runtime.migrate_db()
        return {"bytes": dumped["bytes"], "dump_seconds": dumped["seconds"], "restore_seconds": restored["seconds"]}

    async def keys() -> dict[str, Any]:
        if not (ctx.secrets.source_redis_url and target_redis):
            return {}
        async with ctx.activity(f"{label}: Redis keys (DUMP → RESTORE ABSTTL)") as progress:
            copied = await copy.copy_redis(
                ctx.secrets.source_redis_url,
                target_redis,
                connections=ctx.config.parallel_jobs * 2,
                flush_target=True,
                progress=progress,
            )
        return copied.as_dict()

    db, redis_result, files = await asyncio.gather(database(), keys(), copy_files(ctx))
    return {"db": db, "redis": redis_result, "files": files, "wall_seconds": round(time.monotonic() - started, 3)}


async def writable(url: str) -> None:
    """The dump carries the source's maintenance flag (on during cutover): the target must take writes."""
    conn = await _connect(url)
    try:
        await conn.execute(
            "UPDATE app_state SET maintenance_enabled = false, maintenance_reason = NULL, maintenance_changed_at = now()"
        )
    finally:
        await conn.close()


async def sync(ctx: Context) -> dict[str, Any]:
    """A first full copy while the source stays live: measures the throughput and warms the target."""
    runtime = await ctx.runtime()
    await runtime.stop()
    result = await _copy_everything(ctx, ctx.work_dir / "sync" / "database", "sync")
    await runtime.start()
    await runtime.wait_healthy(timeout=300)
    return result


# ------------------------------------------------------------------------------------------------------- cutover


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


async def _phase(ctx: Context, name: str, action: Callable[[], Awaitable[Any]]) -> Any:
    """Run one cutover phase once: done phases are skipped on --resume."""
    phases: dict[str, Any] = ctx.state.facts.setdefault("cutover_phases", {})
    if name in phases:
        return phases[name]
    started = time.time()
    value = await action()
    phases[name] = {"started_at": started, "ended_at": time.time(), "result": value}
    ctx.state.save()
    log.info(f"cutover: {name} done", extra={"seconds": round(time.time() - started, 3)})
    return phases[name]


async def quick_verify(ctx: Context) -> dict[str, Any]:
    """Row counts per table, key counts, file counts: source (frozen) against target, before the switch."""
    source_rows = await row_counts(ctx.secrets.source_database_url)
    target_rows = await row_counts(await ctx.target_db_url())
    problems = [
        f"{table}: source {source_rows.get(table)} rows, target {target_rows.get(table)}"
        for table in sorted(set(source_rows) | set(target_rows))
        if table != "alembic_version" and source_rows.get(table) != target_rows.get(table)
    ]
    keys: dict[str, int] = {}
    target_redis = await ctx.target_redis_url()
    if ctx.secrets.source_redis_url and target_redis:
        keys = {
            "source": await redisops.key_count(ctx.secrets.source_redis_url),
            "target": await redisops.key_count(target_redis),
        }
        # keys expiring between the two counts make a small difference legitimate
        if abs(keys["source"] - keys["target"]) > max(5, keys["source"] // 1000):
            problems.append(f"Redis: source {keys['source']} keys, target {keys['target']}")
    file_counts: dict[str, int] = {}
    if source_place(ctx) is not None:
        # names and sizes only: hashes are compared by validate, outside the freeze
        staged = await asyncio.to_thread(_sizes, staging_dir(ctx))
        on_target = await copy.remote_sizes(await ctx.target(), ctx.config.target_uploads_dir)
        file_counts = {"source": len(staged), "target": len(on_target)}
        differing = [name for name, size in staged.items() if on_target.get(name) != size]
        if differing:
            problems.append(f"uploads: {len(differing)} missing or of another size on the target")
    return {"rows": sum(source_rows.values()), "keys": keys, "files": file_counts, "problems": problems}


async def switch(ctx: Context) -> dict[str, Any]:
    """DNS first (it moves the clients' writes; printed or handed to the hook), then the Telegram webhook to the
    target with pending updates kept, confirmed by getWebhookInfo."""
    result: dict[str, Any] = {"dns": await point_dns(ctx, ctx.config.source.api_url, ctx.config.target.public_url)}
    ctx.state.remember(writes_switched_at=time.time())
    client = ctx.telegram()
    if client is not None:
        async with client:
            before = await client.get_webhook_info()
            ctx.state.remember(webhook_before=before.url)
            switched = await client.switch_webhook(
                ctx.webhook_url(ctx.config.target.public_url), secret_token=ctx.secrets.webhook_secret
            )
            result["telegram"] = switched.as_dict()
            if not switched.confirmed:
                log.warning("webhook switched but not confirmed", extra={"error": str(switched.error)})
    return result


async def point_dns(ctx: Context, old: str, new: str) -> dict[str, Any]:
    dns = ctx.config.dns
    if dns.hook:
        proc = await asyncio.create_subprocess_exec(
            str(dns.hook), dns.record or "", old, new, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise StepError(f"DNS hook {dns.hook} failed (exit {proc.returncode}): {err.decode()[-300:]}")
        return {"hook": str(dns.hook), "output": out.decode()[-300:]}
    ctx.console.print(f"[bold]DNS:[/] point {dns.record or 'your API name'} at {new} (it served {old})")
    return {"printed": f"{dns.record or '?'} → {new}"}


async def cutover(ctx: Context) -> dict[str, Any]:
    """Freeze writes on the source, final copy, quick verification, switch. Aborts (source writable again) when
    anything fails before the switch or the downtime budget would be exceeded."""
    api = ctx.source_api()
    facts = ctx.state.facts
    runtime = await ctx.runtime()
    if "freeze_started_at" not in facts:
        await api.check_admin()  # wrong credentials: refuse before freezing anything
        estimate = estimate_downtime(ctx, int(facts.get("db_bytes", 0)), int(facts.get("keys", 0)), 0)
        limit = ctx.config.downtime_budget_minutes * 60
        if estimate["seconds"] > limit:
            raise StepError(
                f"estimated write downtime {estimate['seconds']:.0f} s exceeds the budget {limit:.0f} s",
                "raise downtime_budget_minutes",
                EXIT_BUDGET,
            )
        await api.maintenance(True, "timetodo migrate: moving to a new host")
        ctx.state.remember(freeze_started_at=time.time())
    freeze_started = float(ctx.state.facts["freeze_started_at"])
    budget = Budget(ctx, freeze_started)
    switched = "switched_at" in facts
    try:
        if not switched:
            estimate = estimate_downtime(ctx, int(facts.get("db_bytes", 0)), int(facts.get("keys", 0)), 0)
            budget.check("final copy", estimate["seconds"] - FIXED_OVERHEAD_S)
            await _phase(ctx, "stop_target", lambda: runtime.stop())
            await _phase(
                ctx, "final_copy", lambda: _copy_everything(ctx, ctx.work_dir / "cutover" / "database", "cutover")
            )
            budget.check("verification")
            verification = (await _phase(ctx, "verify", lambda: quick_verify(ctx)))["result"]
            if verification["problems"]:
                ctx.state.facts["cutover_phases"].pop("verify", None)
                raise StepError(
                    "cutover verification failed: " + "; ".join(verification["problems"][:5]),
                    "nothing was switched; the source is writable again",
                    EXIT_VERIFICATION,
                )
            await _phase(ctx, "start_target", lambda: _start_and_wait(ctx))
            budget.check("switch")
            await _phase(ctx, "switch", lambda: switch(ctx))
            ctx.state.remember(switched_at=time.time())
    except BaseException as exc:
        if "switched_at" not in ctx.state.facts and not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            await _abort(ctx, str(exc))
        raise
    # writes were refused from the freeze until the target took them (DNS switched, the app already healthy)
    downtime = float(ctx.state.facts.get("writes_switched_at", ctx.state.facts["switched_at"])) - freeze_started
    ctx.state.remember(write_downtime_seconds=downtime)
    # outside the freeze: the cutover dump again into a snapshot database, for validation and a lossless rollback
    await _phase(ctx, "snapshot", lambda: _restore_snapshot(ctx))
    ctx.console.print(f"[bold green]switched[/]: writes frozen for {downtime:.1f} s")
    return {"write_downtime_seconds": round(downtime, 3), "phases": ctx.state.facts.get("cutover_phases", {})}


async def _start_and_wait(ctx: Context) -> dict[str, Any]:
    runtime = await ctx.runtime()
    await runtime.start()
    await runtime.wait_healthy(timeout=120)
    return {"healthy": True}


async def _restore_snapshot(ctx: Context) -> dict[str, Any]:
    snapshot = await ctx.snapshot_db_url()
    name = snapshot.rsplit("/", 1)[1].split("?")[0]
    await copy.ensure_database(await ctx.target_db_url(), name, recreate=True)
    async with ctx.activity("snapshot: pg_restore into the cutover snapshot database"):
        restored = await copy.restore_database(
            snapshot, ctx.work_dir / "cutover" / "database", ctx.config.parallel_jobs
        )
    return {"database": name, **restored}


async def _abort(ctx: Context, reason: str) -> None:
    log.error("cutover aborted: " + reason)
    try:
        await ctx.source_api().maintenance(False)
    except Exception:
        log.exception("could not take the source out of maintenance: do it by hand (timetodo maintenance off)")
        raise
    for key in ("freeze_started_at", "cutover_phases"):
        ctx.state.facts.pop(key, None)
    ctx.state.save()
    ctx.console.print("[yellow]cutover aborted; the source is out of maintenance and keeps serving[/]")


# ------------------------------------------------------------------------------------------------------ validate


VALIDATION_PATHS = ["/api/v1/users/me", "/api/v1/projects?limit=50", "/api/v1/tasks?limit=50"]


async def validate(ctx: Context) -> dict[str, Any]:
    from timetodo.ops import validate as checks

    source_db = ctx.secrets.source_database_url
    switched = "switched_at" in ctx.state.facts
    # after the switch the target takes writes: compare the frozen source with the cutover snapshot instead
    other_db = await ctx.snapshot_db_url() if switched else await ctx.target_db_url()
    report = checks.ValidationReport()
    report.database = await checks.compare_databases(source_db, other_db)
    target_redis = await ctx.target_redis_url()
    if ctx.secrets.source_redis_url and target_redis:
        report.redis = await checks.compare_redis(ctx.secrets.source_redis_url, target_redis)
    if source_place(ctx) is not None:
        await pull_files(ctx)
        staged = await asyncio.to_thread(fileops.scan_tree, staging_dir(ctx))
        report.files = checks.compare_files(
            staged, await copy.remote_manifest(await ctx.target(), ctx.config.target_uploads_dir)
        )
    token = await ctx.source_api().token()
    report.http = await checks.compare_http(
        ctx.config.source.api_url, ctx.config.target.public_url, token, VALIDATION_PATHS
    )
    client = ctx.telegram()
    if client is not None and switched:
        async with client:
            report.webhook = await checks.check_webhook(
                client, ctx.webhook_url(ctx.config.target.public_url), float(ctx.state.facts["switched_at"])
            )
    report.write(ctx.work_dir)
    ctx.console.print(report.to_text())
    if not report.ok:
        raise StepError(
            "validation failed: " + "; ".join(report.errors[:5]),
            f"details in {ctx.work_dir / 'migration_validation_report.txt'}",
            EXIT_VERIFICATION,
        )
    return dict(report.to_dict())


# ------------------------------------------------------------------------------------------------------ rollback


async def rollback(ctx: Context) -> dict[str, Any]:
    """Back to the source with nothing lost: stop the target app, carry every write it accepted after the switch
    back to the source, webhook and DNS back, source out of maintenance."""
    from timetodo.ops import delta as deltaops

    started = time.time()
    facts = ctx.state.facts
    result: dict[str, Any] = {}
    runtime = await ctx.runtime()
    await runtime.stop()
    if "switched_at" in facts:
        target_db, snapshot = await ctx.target_db_url(), await ctx.snapshot_db_url()
        # the maintenance flag is the one thing that must not travel back: the source leaves maintenance last
        async with ctx.activity("rollback: what the target changed since the switch"):
            changes = await deltaops.compute_delta(target_db, snapshot, exclude=("alembic_version", "app_state"))
        async with ctx.activity(f"rollback: {changes.total} row changes back to the source"):
            applied = await deltaops.apply_delta(
                changes, target_db, ctx.secrets.source_database_url, snapshot_url=snapshot
            )
        result["database"] = {"delta": changes.to_dict(), "applied": _as_dict(applied)}
        target_redis = await ctx.target_redis_url()
        if ctx.secrets.source_redis_url and target_redis:
            result["redis"] = (await copy.copy_redis(target_redis, ctx.secrets.source_redis_url)).as_dict()
        src = source_place(ctx)
        if src is not None:
            pulled = await copy.rsync(target_place(ctx), Place(str(staging_dir(ctx))), delete=False)
            pushed = await copy.rsync(Place(str(staging_dir(ctx))), src, delete=False)
            result["files"] = {"pulled": pulled, "pushed": pushed}
        client = ctx.telegram()
        if client is not None:
            async with client:
                back = facts.get("webhook_before") or ctx.webhook_url(ctx.config.source.api_url)
                result["telegram"] = (
                    await client.switch_webhook(back, secret_token=ctx.secrets.webhook_secret)
                ).as_dict()
        result["dns"] = await point_dns(ctx, ctx.config.target.public_url, ctx.config.source.api_url)
    await ctx.source_api().maintenance(False)
    for key in ("switched_at", "freeze_started_at", "cutover_phases"):
        facts.pop(key, None)
    ctx.state.data["steps"].pop("cutover", None)
    ctx.state.data["steps"].pop("validate", None)
    ctx.state.save()
    result["seconds"] = round(time.time() - started, 3)
    ctx.console.print(f"[bold]rolled back[/] in {result['seconds']:.1f} s")
    return result


def _as_dict(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value
