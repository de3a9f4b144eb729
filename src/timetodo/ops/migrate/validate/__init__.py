"""Step `validate` (seed: validate_migration.sh): is the target an exact copy of the source, and does it serve as
well? Each comparison lives in its own module and returns a result with `ok`, `errors`, `warnings` and `to_dict()`:

* `database` — rows and content checksums per table, sequences;
* `redis` — every key's type, value and TTL;
* `files` — the uploads both ways, by sha256;
* `http` — the same authenticated reads answered identically, and latency;
* `webhook` — the Telegram webhook points at the target, no delivery error since the switch;
* `canary` — after the switch, an account planted on the source before the freeze does a client's round trip on the
  target (login, its task and file, WebSocket event, complete, upload/download) and is removed;
* `load` — the same concurrent read/write mix on the source (before the freeze) and the target (after the switch);
* `report` — `ValidationReport` gathers them into `migration_validation_report.txt` / `.json`.

After the switch the target takes writes, so the frozen source is compared with the cutover snapshot instead.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters.rsync import remote_manifest
from timetodo.ops.errors import EXIT_VERIFICATION, StepError
from timetodo.ops.migrate.data import pull_files, source_place, staging_dir
from timetodo.ops.migrate.validate.canary import check_target
from timetodo.ops.migrate.validate.common import REPORT_JSON, REPORT_TXT, Comparison
from timetodo.ops.migrate.validate.database import DbComparison, compare_databases
from timetodo.ops.migrate.validate.files import FilesComparison, compare_files
from timetodo.ops.migrate.validate.http import HttpComparison, compare_http, percentile
from timetodo.ops.migrate.validate.load import LoadFigures, compare_load
from timetodo.ops.migrate.validate.redis import RedisComparison, compare_redis
from timetodo.ops.migrate.validate.report import ValidationReport
from timetodo.ops.migrate.validate.webhook import WebhookCheck, check_webhook

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

__all__ = [
    "REPORT_JSON",
    "REPORT_TXT",
    "Comparison",
    "DbComparison",
    "FilesComparison",
    "HttpComparison",
    "RedisComparison",
    "ValidationReport",
    "WebhookCheck",
    "check_webhook",
    "compare_databases",
    "compare_files",
    "compare_http",
    "compare_redis",
    "percentile",
    "plan",
    "run",
]

NAME = "validate"
# the deployment's own switches (maintenance, forwarding), not user data: the frozen source forwards, the target not
DEPLOYMENT_STATE = ("app_state",)
VALIDATION_PATHS = ["/api/v1/users/me", "/api/v1/projects?limit=50", "/api/v1/tasks?limit=50"]


async def plan(ctx: Context) -> list[PlanLine]:
    return [("local", "checksums source vs cutover snapshot; Redis; files; same API reads; latency")]


async def _compare_stores(ctx: Context, report: ValidationReport, switched: bool) -> None:
    # after the switch the target takes writes: compare the frozen source with the cutover snapshot instead
    other_db = await ctx.snapshot_db_url() if switched else await ctx.target_db_url()
    report.database = await compare_databases(
        ctx.secrets.source_database_url, other_db, exclude_tables=DEPLOYMENT_STATE
    )
    target_redis = await ctx.target_redis_url()
    if ctx.secrets.source_redis_url and target_redis:
        report.redis = await compare_redis(ctx.secrets.source_redis_url, target_redis)
    if source_place(ctx) is not None:
        await pull_files(ctx)
        staged = await asyncio.to_thread(fileops.scan_tree, staging_dir(ctx))
        report.files = compare_files(staged, await remote_manifest(await ctx.target(), ctx.config.target_uploads_dir))


async def _canary(ctx: Context, report: ValidationReport) -> None:
    settings = ctx.config.validate_
    async with ctx.activity("canary: a client's round trip on the target, then the load mix"):
        check = await check_target(ctx, load_seconds=settings.load_seconds, load_connections=settings.load_connections)
    if check is None:
        return
    report.canary = check
    if check.target_load is not None:
        source = (ctx.state.facts.canary or {}).get("source_load")
        report.load = compare_load(LoadFigures.from_dict(source) if source else None, check.target_load)


async def run(ctx: Context) -> dict[str, Any]:
    switched = ctx.state.facts.switched_at is not None
    report = ValidationReport()
    await _compare_stores(ctx, report, switched)
    token = await ctx.source_api().token()
    report.http = await compare_http(ctx.config.source.api_url, ctx.config.target.public_url, token, VALIDATION_PATHS)
    client = ctx.telegram()
    if client is not None and ctx.state.facts.switched_at is not None:
        async with client:
            report.webhook = await check_webhook(
                client, ctx.webhook_url(ctx.config.target.public_url), ctx.state.facts.switched_at
            )
    if switched and ctx.config.validate_.canary:
        await _canary(ctx, report)
    report.write(ctx.work_dir)
    ctx.console.print(report.to_text())
    if not report.ok:
        raise StepError(
            "validation failed: " + "; ".join(report.errors[:5]),
            f"details in {ctx.work_dir / REPORT_TXT}",
            EXIT_VERIFICATION,
        )
    return dict(report.to_dict())
