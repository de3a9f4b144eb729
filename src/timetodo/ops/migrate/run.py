"""Running the steps (seed: run_migration.sh): their order, one step at a time with its state recorded, `--resume`,
the confirmation before the freeze, and `migrate plan` as the concatenation of the steps' own `plan()`s.

Every step is a module with `NAME`, `async plan(ctx)` (the commands it would run, on which host; changes nothing)
and `async run(ctx)` (does it; returns what it did, recorded in the state file). Every step is idempotent.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

from timetodo.ops.errors import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, OpsError, StepError
from timetodo.ops.migrate.config import load_config, load_secrets
from timetodo.ops.migrate.context import Context
from timetodo.ops.migrate.journal import Journal
from timetodo.ops.migrate.report import write_final_report
from timetodo.ops.migrate.state import STEPS, MigrationState, RunLock

log = logging.getLogger("timetodo.ops.migrate")
ROLLBACK = "rollback"
ROLLBACK_REPORT = "migration_rollback_report.json"


def step_module(name: str) -> ModuleType:
    """The module of step `name` (imported on use: `timetodo --help` and the other commands stay fast)."""
    if name not in (*STEPS, ROLLBACK):
        raise ValueError(f"no such step: {name}")
    return importlib.import_module(f"timetodo.ops.migrate.{name}")


def load_context(config_path: Path, console: Console, accept_new_host_key: bool = False) -> Context:
    """Load and check everything before any host is touched (ConfigError / StateError otherwise)."""
    config = load_config(config_path)
    secrets = load_secrets(config)
    state = MigrationState.load(config.work_dir)
    from timetodo.ops.migrate.logical import effective_config

    config = effective_config(config, state.facts)  # `logical` that fell back runs as `delta`
    return Context(config, secrets, config.work_dir, state, console, accept_new_host_key=accept_new_host_key)


def as_step_error(exc: BaseException) -> StepError:
    """Any failure as one line, a hint and an exit code: an `OpsError` keeps its own, anything else is EXIT_ERROR."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, OpsError):
        return StepError(str(exc), exc.hint, exc.exit_code)
    return StepError(f"{type(exc).__name__}: {exc}", str(getattr(exc, "hint", "") or ""), EXIT_ERROR)


async def run_step(ctx: Context, name: str) -> dict[str, Any]:
    """Run one step, its start, end and result (or error) recorded in the state file."""
    ctx.state.start(name)
    ctx.console.rule(f"[bold]{name}")
    try:
        result: dict[str, Any] = await step_module(name).run(ctx)
    except BaseException as exc:
        error = as_step_error(exc) if isinstance(exc, Exception) else None
        if isinstance(exc, Exception) and not isinstance(exc, OpsError):
            log.error(f"{name}: unexpected failure", exc_info=True)  # the traceback goes to migration.log only
        ctx.state.fail(name, str(error or exc.__class__.__name__))
        raise
    ctx.state.finish(name, result)
    return result


def execute(ctx: Context, body: Callable[[Context], Awaitable[int]]) -> int:
    """Run `body` under the work directory's lock and journal; the final report is written whatever happens."""
    try:
        with RunLock(ctx.work_dir), Journal(ctx.work_dir, ctx.secrets.all()):

            async def main() -> int:
                try:
                    return await body(ctx)
                finally:
                    await ctx.close()

            return asyncio.run(main())
    finally:
        if ctx.work_dir.exists():
            write_final_report(ctx.state, ctx.work_dir, ctx.config)


async def print_plan(ctx: Context) -> None:
    """Every step's `plan()`, in order, as one table (changes nothing)."""
    c = ctx.config
    table = Table(title=f"plan: {c.source.api_url} → {c.target.public_url}", title_justify="left")
    for column in ("step", "host", "command"):
        table.add_column(column)
    for step in STEPS:
        done = " (done)" if ctx.state.is_done(step) else ""
        for i, (host, command) in enumerate(await step_module(step).plan(ctx)):
            table.add_row(step + done if i == 0 else "", host, command)
    ctx.console.print(table)


def order(*, skip_backup: bool, skip_prepare: bool, validate_only: bool) -> list[str]:
    if validate_only:
        return ["validate"]
    skipped = {name for name, skip in (("backup", skip_backup), ("prepare", skip_prepare)) if skip}
    return [s for s in STEPS if s not in skipped]


async def run_all(ctx: Context, steps: list[str], *, resume: bool, confirm: Callable[[str], bool]) -> int:
    """The steps in order; done ones are skipped (preflight always runs again); the freeze needs `confirm`."""
    unfinished = ctx.state.unfinished()
    if unfinished and not resume:
        raise StepError(
            f"a previous run stopped during '{unfinished[0]}'",
            "continue it with --resume (or move the work directory away to start over)",
            EXIT_REFUSED,
        )
    for name in steps:
        if ctx.state.is_done(name) and name != "preflight":
            ctx.console.print(f"[dim]{name}: done already[/]")
            continue
        if name == "cutover" and not confirm("Freeze writes on the source and switch?"):
            raise StepError("cutover not confirmed", "run again with --yes or answer y", EXIT_REFUSED)
        await run_step(ctx, name)
    downtime = ctx.state.facts.write_downtime_seconds
    if downtime is not None:
        ctx.console.print(f"[bold green]migrated[/]; measured write downtime {downtime:.2f} s")
    return EXIT_OK


async def rollback(ctx: Context) -> int:
    result = await run_step(ctx, ROLLBACK)
    (ctx.work_dir / ROLLBACK_REPORT).write_text(json.dumps(result, indent=2, default=str))
    return EXIT_OK
