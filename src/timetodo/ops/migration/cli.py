"""`timetodo migrate …` — thin commands over the steps (exit codes in context.py, README "Migrating to a new host")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from timetodo.ops.config import ConfigError, load_config, load_secrets
from timetodo.ops.migration.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_VERIFICATION,
    StepError,
)
from timetodo.ops.migration.journal import Journal
from timetodo.ops.migration.report import write_final_report
from timetodo.ops.migration.state import STEPS, MigrationState, RunLock, StateError

if TYPE_CHECKING:
    from timetodo.ops.migration.context import Context

migrate_app = typer.Typer(
    help="Move a live deployment to a new host (Render → VPS): plan, backup, prepare, deploy, sync, cutover, "
    "validate, rollback, or all of them with `run`.",
    no_args_is_help=True,
)
console = Console(stderr=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="migration.toml (see migration.example.toml)")]
AcceptOption = Annotated[
    bool, typer.Option("--accept-new-host-key", help="trust and remember an unknown SSH host key (never a changed one)")
]


def step_function(name: str) -> Callable[[Context], Awaitable[dict[str, Any]]]:
    """The step's coroutine (imported on use: `timetodo --help` and the other commands stay fast)."""
    from timetodo.ops.migration import steps

    function: Callable[[Context], Awaitable[dict[str, Any]]] = getattr(steps, name)
    return function


def _fail(message: str, hint: str = "", code: int = EXIT_ERROR) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {hint}", highlight=False)
    return typer.Exit(code)


def _context(config_path: Path, accept_new_host_key: bool) -> Context:
    """Load and check everything before any host is touched."""
    try:
        config = load_config(config_path)
        secrets = load_secrets(config)
    except ConfigError as exc:
        raise _fail(f"invalid migration config: {exc}", exc.hint or "", EXIT_ERROR) from None
    from timetodo.ops.migration.context import Context

    work_dir = config.work_dir if config.work_dir.is_absolute() else config_path.parent / config.work_dir
    try:
        state = MigrationState.load(work_dir)
    except StateError as exc:
        raise _fail(str(exc), exc.hint) from None
    return Context(
        config,
        secrets,
        work_dir,
        state,
        console,
        accept_new_host_key=accept_new_host_key,
        config_dir=config_path.parent,
    )


def _classify(exc: BaseException) -> StepError:
    if isinstance(exc, StepError):
        return exc
    hint = str(getattr(exc, "hint", "") or "")
    name = type(exc).__name__
    if name in (
        "ConnectError",
        "AuthError",
        "HostKeyError",
        "PgUnreachable",
        "RedisUnreachable",
        "TelegramUnreachable",
    ):
        return StepError(str(exc), hint, EXIT_UNREACHABLE if name != "HostKeyError" else EXIT_REFUSED)
    return StepError(f"{name}: {exc}", hint, EXIT_ERROR)


async def _run_step(ctx: Context, name: str, action: Callable[[Context], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    ctx.state.start(name)
    console.rule(f"[bold]{name}")
    try:
        result = await action(ctx)
    except BaseException as exc:
        error = _classify(exc) if isinstance(exc, Exception) else None
        ctx.state.fail(name, str(error or exc.__class__.__name__))
        raise
    ctx.state.finish(name, result)
    return result


def _execute(config_path: Path, accept_new_host_key: bool, body: Callable[[Context], Awaitable[int]]) -> None:
    ctx = _context(config_path, accept_new_host_key)
    code = EXIT_OK
    try:
        with RunLock(ctx.work_dir), Journal(ctx.work_dir, ctx.secrets.all()):

            async def main() -> int:
                try:
                    return await body(ctx)
                finally:
                    await ctx.close()

            code = asyncio.run(main())
    except StateError as exc:
        raise _fail(str(exc), exc.hint, EXIT_REFUSED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", "continue with: timetodo migrate run --resume", EXIT_ERROR) from None
    except Exception as exc:
        error = _classify(exc)
        raise _fail(str(error), error.hint, error.code) from None
    finally:
        if ctx.work_dir.exists():
            write_final_report(ctx.state, ctx.work_dir)
    raise typer.Exit(code)


def _single(name: str) -> Callable[[Path, bool], None]:
    def command(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
        async def body(ctx: Context) -> int:
            await _run_step(ctx, name, step_function(name))
            return EXIT_OK

        _execute(config, accept_new_host_key, body)

    return command


HELP = {
    "backup": "Back up the source into <work_dir>/backups/<timestamp>/: pg_dump -Fd, every Redis key with its TTL, "
    "the uploads, a manifest with sha256 of every file.\n\nExample: timetodo migrate backup -c migration.toml",
    "prepare": "Prepare the target host idempotently (Docker CE + compose plugin, deploy user, ufw 22/80/443, swap, "
    "fail2ban, unattended-upgrades) and self-check it.\n\nExample: timetodo migrate prepare -c migration.toml",
    "deploy": "Ship the compose bundle and the env file (0600) to the target, start it, migrate, wait for "
    "/health/detailed.\n\nExample: timetodo migrate deploy -c migration.toml",
    "sync": "First full copy (database, Redis, uploads) while the source stays live: measures throughput for the "
    "downtime estimate.\n\nExample: timetodo migrate sync -c migration.toml",
    "cutover": "Freeze writes on the source (maintenance mode), final copy, verify, switch webhook and DNS. Aborts and "
    "unfreezes the source if the downtime budget would be exceeded.\n\nExample: timetodo migrate cutover -c "
    "migration.toml",
    "validate": "Compare source and target: rows and checksums per table, sequences, Redis keys/TTLs, files both "
    "ways, identical API answers, latency, webhook. Writes migration_validation_report.txt/.json.\n\nExample: "
    "timetodo migrate validate -c migration.toml",
}
for _name, _help in HELP.items():
    migrate_app.command(_name, help=_help)(_single(_name))


@migrate_app.command("plan")
def plan(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
    """Preflight checks and the plan: every command on which host, the downtime estimate. Changes nothing.

    Example: timetodo migrate plan -c migration.toml
    """

    async def body(ctx: Context) -> int:
        print_plan(ctx)
        await step_function("preflight")(ctx)
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


def print_plan(ctx: Context) -> None:
    c, jobs = ctx.config, ctx.config.parallel_jobs
    target = ctx.target_ssh().describe()
    source_files = ctx.source_files_ssh()
    lines = {
        "preflight": [
            ("local", "connect source DB/Redis/API; pg_dump --version"),
            (target, "cat /etc/os-release; free disk in " + c.app_dir),
        ],
        "backup": [
            ("local", f"pg_dump --format=directory --jobs={jobs} --dbname=<source> → backups/<ts>/database"),
            ("local", "Redis SCAN + DUMP + PTTL → backups/<ts>/redis.jsonl"),
            (source_files.describe() if source_files else "local", "rsync uploads → backups/<ts>/uploads"),
        ],
        "prepare": [(target, "bash -s < prepare script" if c.target.runtime == "compose" else f"mkdir -p {c.app_dir}")],
        "deploy": [
            (
                target,
                f"write {c.app_dir}/.env (0600); "
                + (
                    "docker compose up -d --wait"
                    if c.target.runtime == "compose"
                    else "timetodo db upgrade; timetodo serve (detached)"
                ),
            ),
            (target, "wait for /health/detailed"),
        ],
        "sync": [
            (target, "stop the app"),
            ("local", f"pg_dump -Fd -j{jobs} source; pg_restore --clean -j{jobs} target (SSH tunnel)"),
            (target, "timetodo db upgrade"),
            ("local", "Redis copy (ABSTTL REPLACE)"),
            ("local", "rsync source → staging → target"),
            (target, "start the app; wait healthy"),
        ],
        "cutover": [
            (c.source.api_url, "PUT /api/v1/admin/maintenance on"),
            ("local", "final dump/restore, Redis, files"),
            ("local", "verify row/key/file counts"),
            (target, "start the app"),
            ("api.telegram.org", "setWebhook (pending updates kept); getWebhookInfo"),
            ("local", "DNS: " + (str(c.dns.hook) if c.dns.hook else "print the record to change")),
        ],
        "validate": [("local", "checksums source vs cutover snapshot; Redis; files; same API reads; latency")],
    }
    from rich.table import Table

    table = Table(title=f"plan: {c.source.api_url} → {c.target.public_url}", title_justify="left")
    for column in ("step", "host", "command"):
        table.add_column(column)
    for step, entries in lines.items():
        done = " (done)" if ctx.state.is_done(step) else ""
        for i, (host, command) in enumerate(entries):
            table.add_row(step + done if i == 0 else "", host, command)
    console.print(table)


@migrate_app.command("run")
def run(
    config: ConfigOption = Path("migration.toml"),
    accept_new_host_key: AcceptOption = False,
    skip_backup: Annotated[bool, typer.Option("--skip-backup", help="do not back up the source first")] = False,
    skip_prepare: Annotated[bool, typer.Option("--skip-prepare", help="the target host is already prepared")] = False,
    validate_only: Annotated[bool, typer.Option("--validate-only", help="only compare source and target")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask before freezing writes")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue a run that stopped (crash, Ctrl-C)")] = False,
) -> None:
    """Everything in order: preflight, backup, prepare, deploy, sync, cutover, validate.

    Example: timetodo migrate run -c migration.toml --skip-prepare --yes
    """

    async def body(ctx: Context) -> int:
        if dry_run:
            print_plan(ctx)
            return EXIT_OK
        unfinished = ctx.state.unfinished()
        if unfinished and not resume:
            raise StepError(
                f"a previous run stopped during '{unfinished[0]}'",
                "continue it with --resume (or move the work directory away to start over)",
                EXIT_REFUSED,
            )
        order = (
            ["validate"]
            if validate_only
            else [s for s in STEPS if not (s == "backup" and skip_backup) and not (s == "prepare" and skip_prepare)]
        )
        for name in order:
            if ctx.state.is_done(name) and name != "preflight":
                console.print(f"[dim]{name}: done already[/]")
                continue
            if name == "cutover" and not yes and not typer.confirm("Freeze writes on the source and switch?"):
                raise StepError("cutover not confirmed", "run again with --yes or answer y", EXIT_REFUSED)
            await _run_step(ctx, name, step_function(name))
        downtime = ctx.state.facts.get("write_downtime_seconds")
        if downtime is not None:
            console.print(f"[bold green]migrated[/]; measured write downtime {float(downtime):.2f} s")
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


@migrate_app.command("rollback")
def rollback(
    config: ConfigOption = Path("migration.toml"),
    accept_new_host_key: AcceptOption = False,
    force: Annotated[bool, typer.Option("--force", help="do not ask for confirmation")] = False,
) -> None:
    """Back to the source with nothing lost: the target's writes since the switch are carried back, webhook and
    DNS point at the source again, the source leaves maintenance mode, the target app stops.

    Example: timetodo migrate rollback -c migration.toml --force
    """
    if not force and not typer.confirm("Roll back to the source host?"):
        raise typer.Exit(EXIT_REFUSED)

    async def body(ctx: Context) -> int:
        result = await _run_step(ctx, "rollback", step_function("rollback"))
        (ctx.work_dir / "migration_rollback_report.json").write_text(
            __import__("json").dumps(result, indent=2, default=str)
        )
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


@migrate_app.command("status")
def status(config: ConfigOption = Path("migration.toml")) -> None:
    """Where the migration stands (from the state file).

    Example: timetodo migrate status -c migration.toml
    """
    ctx = _context(config, False)
    from rich.table import Table

    table = Table(title=f"migration state ({ctx.state.path})", title_justify="left")
    for column in ("step", "status", "detail"):
        table.add_column(column)
    for name in (*STEPS, "rollback"):
        step = ctx.state.data.get("steps", {}).get(name)
        if step:
            table.add_row(name, step.get("status", "?"), str(step.get("error") or "")[:100])
        else:
            table.add_row(name, "pending", "")
    Console().print(table)
    downtime = ctx.state.facts.get("write_downtime_seconds")
    if downtime is not None:
        Console().print(f"measured write downtime: {float(downtime):.2f} s")
    failed = [s for s in ctx.state.data.get("steps", {}).values() if s.get("status") == "failed"]
    raise typer.Exit(EXIT_VERIFICATION if failed else EXIT_OK)
