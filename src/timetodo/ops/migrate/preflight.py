"""Step `preflight`: reachability, versions, sizes, free disk, tables without a primary key, the downtime estimate.

Changes nothing anywhere. Every check is one row of a table (ok, warning or blocker, with the fix); the step fails
(EXIT_REFUSED) on the first blocker, after showing them all. What it measured is remembered for later steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.table import Table

from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.adapters.rsync import usage_command
from timetodo.ops.errors import EXIT_REFUSED, OpsError, StepError
from timetodo.ops.migrate.data import connect, mb, source_place
from timetodo.ops.migrate.deploy.runtime import parse_env_text
from timetodo.ops.migrate.estimate import estimate_downtime

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

NAME = "preflight"


@dataclass
class Checks:
    rows: list[dict[str, str]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.rows.append({"check": name, "status": status, "detail": detail, "fix": fix})

    def table(self) -> Table:
        table = Table(title="preflight", title_justify="left")
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column)
        for row in self.rows:
            table.add_row(row["check"], row["status"], row["detail"], row["fix"])
        return table


async def plan(ctx: Context) -> list[PlanLine]:
    return [
        ("local", "connect source DB/Redis/API; pg_dump --version"),
        (ctx.target_ssh().describe(), "cat /etc/os-release; free disk in " + ctx.config.app_dir),
    ]


async def _source_api(ctx: Context, checks: Checks) -> None:
    api = ctx.source_api()
    if not await api.health():
        checks.add(
            "source API", "blocker", f"{ctx.config.source.api_url}/health does not answer 200", "check source.api_url"
        )
        return
    checks.add("source API", "ok", ctx.config.source.api_url)
    if version := await api.version():
        checks.facts["source_version"] = version
    try:
        await api.check_admin()
        checks.add("source admin access", "ok", "can switch maintenance mode")
    except StepError as exc:
        checks.add("source admin access", "blocker", str(exc), exc.hint)


async def _source_database(ctx: Context, checks: Checks) -> None:
    try:
        conn = await connect(ctx.secrets.source_database_url)
        try:
            major = int(await conn.fetchval("SHOW server_version_num")) // 10000
            db_bytes = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
            no_pk = await pg.tables_without_primary_key(conn)
        finally:
            await conn.close()
    except StepError as exc:
        checks.add("source database", "blocker", str(exc), exc.hint)
        return
    checks.add("source database", "ok", f"PostgreSQL {major}, {mb(db_bytes)}")
    local_major = await pg.pg_dump_major()
    if local_major < major:
        fix = f"install postgresql-client-{major} (or set TIMETODO_PG_BIN)"
        checks.add("pg_dump version", "blocker", f"pg_dump {local_major} < server {major}", fix)
    else:
        checks.add("pg_dump version", "ok", f"pg_dump {local_major} ≥ server {major}")
    if no_pk:
        checks.add(
            "primary keys",
            "warning",
            f"tables without a primary key: {', '.join(no_pk)}",
            "they are copied (the delta strategy copies each whole when it differs), but validation compares them "
            "as whole tables and rollback cannot diff them",
        )
    checks.facts.update(source_pg_major=major, db_bytes=db_bytes, tables_without_pk=no_pk)


async def _source_redis(ctx: Context, checks: Checks) -> None:
    if not ctx.secrets.source_redis_url:
        return
    try:
        engine, version = await redisops.redis_version(ctx.secrets.source_redis_url)
        keys = await redisops.key_count(ctx.secrets.source_redis_url)
    except redisops.RedisOpError as exc:
        checks.add("source Redis", "blocker", str(exc), exc.hint or "check the variable named in source.redis_url_env")
        return
    checks.add("source Redis", "ok", f"{engine} {version}, {keys:,} keys")
    checks.facts.update(source_redis=f"{engine} {version}", keys=keys)


async def _source_uploads(ctx: Context, checks: Checks) -> None:
    files_bytes = files_count = 0
    place = source_place(ctx)
    if place is not None:
        try:
            transport = await ctx.source_files()
            result = await transport.run(
                usage_command(place.path),
                timeout=600,
                check=False,
            )
            numbers = [int(x) for x in result.stdout.split() if x.isdigit()]
            files_bytes, files_count = [*numbers, 0, 0][:2]
            checks.add("source uploads", "ok", f"{files_count:,} files, {mb(files_bytes)} in {place.path}")
        except Exception as exc:
            checks.add("source uploads", "blocker", f"{type(exc).__name__}: {exc}", getattr(exc, "hint", ""))
    checks.facts.update(files_bytes=files_bytes, files=files_count)


async def _target_host(ctx: Context, checks: Checks) -> None:
    try:
        target = await ctx.target()
        release = await target.run("cat /etc/os-release 2>/dev/null | grep ^PRETTY_NAME= || uname -sr", timeout=30)
        checks.add("target SSH", "ok", f"{target.describe()}: {release.stdout.strip().removeprefix('PRETTY_NAME=')}")
        free = await target.free_bytes(ctx.config.app_dir)
    except Exception as exc:
        hint = exc.hint if isinstance(exc, OpsError) and exc.hint else "check target.host/port/user/key_file"
        checks.add("target SSH", "blocker", str(exc), hint)
        return
    need = 2 * (checks.facts.get("db_bytes", 0) + checks.facts.get("files_bytes", 0))
    status = "ok" if free >= need else "blocker"
    fix = "" if status == "ok" else "grow the disk or clean it up"
    checks.add("target free disk", status, f"{mb(free)} free, {mb(need)} needed (2× data)", fix)
    checks.facts.update(target_free_bytes=free)


async def _target_redis(ctx: Context, checks: Checks) -> None:
    if not (ctx.secrets.target_redis_url and ctx.secrets.source_redis_url and "source_redis" in checks.facts):
        return
    src_engine, src_version = str(checks.facts["source_redis"]).split(" ", 1)
    if ctx.config.target.runtime == "compose":
        _target_redis_image(ctx, checks, src_engine, src_version)
    try:
        engine, version = await redisops.redis_version(str(await ctx.target_redis_url()))
    except Exception as exc:
        status = "blocker" if ctx.state.is_done("deploy") else "warning"
        checks.add("target Redis", status, f"not reachable yet: {exc}", "deploy starts it")
        return
    compatible = redisops.restore_compatible(src_engine, src_version, engine, version)
    fix = "" if compatible else f"the target needs {src_engine} ≥ {src_version} to RESTORE the source's keys"
    checks.add("target Redis", "ok" if compatible else "blocker", f"{engine} {version}", fix)


def _target_redis_image(ctx: Context, checks: Checks, src_engine: str, src_version: str) -> None:
    """The compose target's Redis follows the source: deploy sets REDIS_IMAGE when the env file leaves it out; an
    image set there that cannot read the source's keys is a blocker naming the value to write instead."""
    wanted = redisops.image_for(src_engine, src_version)
    env_file = ctx.config.target.env_file
    try:
        chosen = parse_env_text(env_file.read_text()).get("REDIS_IMAGE") if env_file else None
    except (OSError, OpsError):
        chosen = None  # deploy names an unreadable env file itself
    if not chosen:
        checks.add("target Redis image", "ok", f"{wanted} (follows the source's {src_engine} {src_version})")
        checks.facts["target_redis_image"] = wanted
        return
    promised = redisops.image_version(chosen)
    if promised is None:
        checks.add(
            "target Redis image",
            "warning",
            f"REDIS_IMAGE={chosen}: its tag names no version",
            f"pin it, e.g. REDIS_IMAGE={wanted}",
        )
    elif redisops.restore_compatible(src_engine, src_version, *promised):
        checks.add("target Redis image", "ok", f"REDIS_IMAGE={chosen} reads the source's {src_engine} {src_version}")
    else:
        checks.add(
            "target Redis image",
            "blocker",
            f"REDIS_IMAGE={chosen} cannot read the keys of the source's {src_engine} {src_version}",
            f"set REDIS_IMAGE={wanted} in {env_file}",
        )


async def run(ctx: Context) -> dict[str, Any]:
    checks = Checks()
    from timetodo.ops.migrate.logical import preflight_check as _logical

    for check in (_source_api, _source_database, _logical, _source_redis, _source_uploads, _target_host, _target_redis):
        await check(ctx, checks)
    facts = checks.facts
    estimate = estimate_downtime(ctx, facts.get("db_bytes", 0), facts.get("keys", 0), facts.get("files_bytes", 0))
    budget = ctx.config.downtime_budget_minutes * 60
    within = estimate["seconds"] <= budget
    checks.add(
        "downtime estimate",
        "ok" if within else "blocker",
        f"{estimate['seconds']:.0f} s ({estimate['basis']}), budget {budget:.0f} s",
        "" if within else "raise downtime_budget_minutes or shrink the data",
    )
    ctx.console.print(checks.table())
    ctx.state.remember(**facts)
    blockers = [c for c in checks.rows if c["status"] == "blocker"]
    if blockers:
        first = blockers[0]
        raise StepError(f"preflight: {first['check']}: {first['detail']}", first["fix"], EXIT_REFUSED)
    return {"checks": checks.rows, "facts": facts, "estimate": estimate}
