"""Step `prepare` (seed: prepare_selectel_server.sh): make the target host ready for the app, idempotently.

`host` renders the script (`prepare.sh`), runs it on the target and parses its report; a runtime without a
container engine (`process`) only needs its app directory.
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
    target = ctx.target_ssh().describe()
    if ctx.config.target.runtime == "process":
        return [(target, f"mkdir -p {ctx.config.app_dir}")]
    return [(target, "bash -s < prepare script")]


async def run(ctx: Context) -> dict[str, Any]:
    target = await ctx.target()
    if ctx.config.target.runtime == "process":
        await target.run(["mkdir", "-p", ctx.config.app_dir, ctx.config.target_uploads_dir], timeout=60)
        return {"runtime": "process", "note": "no container engine: app directory ensured only"}
    result = await run_prepare(target, prepare_script(app_dir=ctx.config.app_dir, ssh_port=ctx.config.target.port))
    result.render(ctx.console)
    if result.failed:
        raise StepError(f"prepare: {len(result.failed)} item(s) failed on the target", "see the table above")
    return dict(result.to_dict())
