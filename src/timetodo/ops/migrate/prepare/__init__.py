"""Step `prepare` (seed: prepare_selectel_server.sh): make the target host ready for the app, idempotently.

`host` renders the script (`prepare.sh`), runs it on the target and parses its report. What a host needs depends
on how the app runs there, so the runtime decides (`Runtime.prepare_host`): the compose runtime runs the script,
the process runtime (no container engine) only needs its directories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timetodo.ops.errors import StepError
from timetodo.ops.migrate.prepare.host import (
    PrepareItem,
    PrepareResult,
    parse_prepare_output,
    prepare_script,
    run_prepare,
)

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

__all__ = ["PrepareItem", "PrepareResult", "parse_prepare_output", "plan", "prepare_script", "run", "run_prepare"]

NAME = "prepare"


async def plan(ctx: Context) -> list[PlanLine]:
    return [(ctx.target_ssh().describe(), (await ctx.runtime()).prepare_plan())]


async def run(ctx: Context) -> dict[str, Any]:
    runtime = await ctx.runtime()
    result = await runtime.prepare_host(ctx.config.target_uploads_dir, ctx.config.target.port)
    if not isinstance(result, PrepareResult):
        return result
    result.render(ctx.console)
    if result.failed:
        raise StepError(f"prepare: {len(result.failed)} item(s) failed on the target", "see the table above")
    return dict(result.to_dict())
