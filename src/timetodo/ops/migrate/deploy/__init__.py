"""Step `deploy` (seed: deploy_to_selectel.sh): ship the app and its env file (0600) to the target, start it, migrate
its database, wait for `/health/detailed`.

How the app runs there is a `Runtime` (`runtime`: the protocol and what every runtime guarantees; `compose`: the
compose bundle under Docker; `process`: `timetodo serve` from a virtualenv). Only the runtimes know their details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timetodo.ops.adapters.transport import Transport
from timetodo.ops.errors import StepError
from timetodo.ops.migrate.config import MigrationConfig
from timetodo.ops.migrate.deploy.compose import ComposeRuntime
from timetodo.ops.migrate.deploy.process import ProcessRuntime
from timetodo.ops.migrate.deploy.runtime import (
    DeployError,
    DeployResult,
    PlannedCommand,
    Runtime,
    env_secrets,
    parse_env_text,
)

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

__all__ = [
    "ComposeRuntime",
    "DeployError",
    "DeployResult",
    "PlannedCommand",
    "ProcessRuntime",
    "Runtime",
    "env_secrets",
    "make_runtime",
    "parse_env_text",
    "plan",
    "run",
]

NAME = "deploy"


def make_runtime(config: MigrationConfig, transport: Transport) -> Runtime:
    """The runtime `target.runtime` names, driven through `transport`."""
    target = config.target
    if target.runtime == "process":
        return ProcessRuntime(
            transport,
            config.app_dir,
            timetodo_bin=target.timetodo_bin or f"{config.app_dir}/venv/bin/timetodo",
            host=target.app_host,
            port=target.app_port,
        )
    return ComposeRuntime(transport, config.app_dir, bundle_dir=target.bundle_dir, project=config.app_name)


def env_text(ctx: Context) -> str:
    path = ctx.config.target.env_file
    if path is None:
        raise StepError("target.env_file is not set", "write the target's .env (see deploy/.env.example)")
    try:
        text = path.read_text()
    except OSError as exc:
        raise StepError(f"target.env_file: cannot read {path}: {exc.strerror}") from None
    image = ctx.state.facts.target_redis_image
    if image and ctx.config.target.runtime == "compose" and "REDIS_IMAGE" not in parse_env_text(text):
        # the Redis that can read the source's keys (preflight chose it from the source's engine and version)
        text = text.rstrip("\n") + f"\nREDIS_IMAGE={image}\n"
    return text


async def plan(ctx: Context) -> list[PlanLine]:
    target = ctx.target_ssh().describe()
    runtime = await ctx.runtime()
    return [
        (target, f"write {ctx.config.app_dir}/.env (0600); {runtime.start_plan()}"),
        (target, "wait for /health/detailed"),
    ]


async def run(ctx: Context) -> dict[str, Any]:
    runtime = await ctx.runtime()
    result = await runtime.deploy(env_text(ctx))
    await runtime.wait_healthy(timeout=300)
    return dict(result.to_dict())
