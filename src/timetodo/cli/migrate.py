"""`timetodo migrate …`: thin commands over the steps of `timetodo.ops.migrate` (one per seed script), exit codes
from the one table (`timetodo.ops.errors`; README "Migrating to a new host")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from timetodo.cli.common import fail
from timetodo.ops.errors import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, EXIT_VERIFICATION
from timetodo.ops.migrate.config import ConfigError
from timetodo.ops.migrate.state import STEPS, StateError

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context

app = typer.Typer(
    help="Move a live deployment to a new host (Render → VPS): plan, backup, prepare, deploy, sync, cutover, "
    "validate, rollback, or all of them with `run`.",
    no_args_is_help=True,
)
console = Console(stderr=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="migration.toml (see migration.example.toml)")]
AcceptOption = Annotated[
    bool, typer.Option("--accept-new-host-key", help="trust and remember an unknown SSH host key (never a changed one)")
]


def _context(config_path: Path, accept_new_host_key: bool) -> Context:
    """Load and check everything before any host is touched."""
    from timetodo.ops.migrate.run import load_context

    try:
        return load_context(config_path, console, accept_new_host_key)
    except ConfigError as exc:
        fail(f"invalid migration config: {exc}", exc.hint, EXIT_ERROR)
    except StateError as exc:
        fail(str(exc), exc.hint, exc.exit_code)


def _execute(config_path: Path, accept_new_host_key: bool, body: Callable[[Context], Awaitable[int]]) -> None:
    from timetodo.ops.migrate.run import as_step_error, execute

    ctx = _context(config_path, accept_new_host_key)
    try:
        code = execute(ctx, body)
    except StateError as exc:
        fail(str(exc), exc.hint, EXIT_REFUSED)
    except KeyboardInterrupt:
        fail("interrupted", "continue with: timetodo migrate run --resume", EXIT_ERROR)
    except Exception as exc:
        error = as_step_error(exc)
        fail(str(error), error.hint, error.code)
    raise typer.Exit(code)


def _single(name: str) -> Callable[[Path, bool], None]:
    def command(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
        from timetodo.ops.migrate.run import run_step

        async def body(ctx: Context) -> int:
            await run_step(ctx, name)
            return EXIT_OK

        _execute(config, accept_new_host_key, body)

    return command


HELP = {
    "backup": "Back up the source into one archive <work_dir>/backups/timetodo-<time>.tar, the format `timetodo "
    "backup verify` and `restore` read: pg_dump -Fc with row counts from the same snapshot, every Redis key with "
    "its TTL, the uploads, a manifest with the sha256 of every part and file.\n\nExample: timetodo migrate backup "
    "-c migration.toml",
    "prepare": "Prepare the target host idempotently (Docker CE or the distribution's docker.io, deploy user, SSH "
    "hardening, ufw 22/80/443, swap, fail2ban, unattended-upgrades, certbot) and self-check it; without systemd or in "
    "a container, what needs them is reported skipped.\n\nExample: timetodo migrate prepare -c migration.toml",
    "deploy": "Ship the compose bundle, the app's image (built on the target from the build context by default) and "
    "the env file (0600) to the target, start it, migrate, obtain the certificate for an https:// public_url, wait "
    "for /health/detailed.\n\nExample: timetodo migrate deploy -c migration.toml",
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
    app.command(_name, help=_help)(_single(_name))


@app.command("plan")
def plan(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
    """Preflight checks and the plan: every command on which host, the downtime estimate. Changes nothing.

    Example: timetodo migrate plan -c migration.toml
    """
    from timetodo.ops.migrate import preflight
    from timetodo.ops.migrate.run import print_plan

    async def body(ctx: Context) -> int:
        await print_plan(ctx)
        await preflight.run(ctx)
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


@app.command("run")
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
    from timetodo.ops.migrate.run import order, print_plan, run_all

    steps = order(skip_backup=skip_backup, skip_prepare=skip_prepare, validate_only=validate_only)

    async def body(ctx: Context) -> int:
        if dry_run:
            await print_plan(ctx)
            return EXIT_OK
        return await run_all(ctx, steps, resume=resume, confirm=lambda question: yes or typer.confirm(question))

    _execute(config, accept_new_host_key, body)


@app.command("rollback")
def rollback(
    config: ConfigOption = Path("migration.toml"),
    accept_new_host_key: AcceptOption = False,
    force: Annotated[bool, typer.Option("--force", help="do not ask for confirmation")] = False,
) -> None:
    """Back to the source with nothing lost: the target's writes since the switch are carried back, webhook and
    DNS point at the source again, the source leaves maintenance mode, the target app stops.

    Example: timetodo migrate rollback -c migration.toml --force
    """
    from timetodo.ops.migrate.run import rollback as roll_back

    if not force and not typer.confirm("Roll back to the source host?"):
        raise typer.Exit(EXIT_REFUSED)
    _execute(config, accept_new_host_key, roll_back)


@app.command("finish")
def finish(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
    """End the migration once DNS has moved every client: the source stops forwarding its API to the target (it
    stays frozen, so a rollback is still possible — by the row delta: the reverse stream's slot is dropped here).

    Example: timetodo migrate finish -c migration.toml
    """
    from timetodo.ops.migrate.switch import end_forwarding

    async def body(ctx: Context) -> int:
        from timetodo.ops.migrate.logical import cleanup_quietly

        # strategy logical: nothing of the replication left on either side (the reverse slot retains the target's WAL)
        cleaned = await cleanup_quietly(ctx, reverse=True)
        if (cleaned.get("reverse") or {}).get("slot_dropped"):
            console.print(f"reverse replication slot {cleaned['reverse']['slot']} dropped on the target")
        if await end_forwarding(ctx):
            console.print("[bold]finished[/]: the source no longer forwards; it stays in maintenance mode")
        else:
            console.print("nothing to finish: the source is not forwarding")
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


@app.command("app-rollback")
def app_rollback(config: ConfigOption = Path("migration.toml"), accept_new_host_key: AcceptOption = False) -> None:
    """The app on the target goes back to the image of the deployment before (compose runtime; the data stays as
    it is). The image of each deployment is recorded on the target in <app_dir>/.image.json.

    Example: timetodo migrate app-rollback -c migration.toml
    """
    from timetodo.ops.migrate.deploy import rollback_app

    async def body(ctx: Context) -> int:
        image = await rollback_app(ctx)
        console.print(f"[bold]app rolled back[/]: {image['tag']} ({image['id'][:19]}) runs again")
        return EXIT_OK

    _execute(config, accept_new_host_key, body)


@app.command("status")
def status(config: ConfigOption = Path("migration.toml")) -> None:
    """Where the migration stands (from the state file).

    Example: timetodo migrate status -c migration.toml
    """
    ctx = _context(config, False)
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
    downtime = ctx.state.facts.write_downtime_seconds
    if downtime is not None:
        Console().print(f"measured write downtime: {downtime:.2f} s")
    failed = [s for s in ctx.state.data.get("steps", {}).values() if s.get("status") == "failed"]
    raise typer.Exit(EXIT_VERIFICATION if failed else EXIT_OK)


__all__ = ["app"]
