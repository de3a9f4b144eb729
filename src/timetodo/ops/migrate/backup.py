"""Step `backup` (seed: backup_render_data.sh): one archive of the source, in the format `timetodo backup verify`
and `timetodo backup restore` read (`ops.backup`): pg_dump -Fc with the row counts taken in the same exported
snapshot, every Redis key with its TTL, the uploads (relayed through the local staging copy when they live on
another host), a manifest with the sha256 of every part and file.

The archive lands in `<work_dir>/backups/timetodo-<UTC time>.tar`, written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timetodo.ops.backup import create_backup
from timetodo.ops.migrate.data import pull_files, source_place, staging_dir
from timetodo.ops.sources import DataSources

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context, PlanLine

NAME = "backup"


async def plan(ctx: Context) -> list[PlanLine]:
    source_files = ctx.source_files_ssh()
    lines: list[PlanLine] = []
    if source_place(ctx) is not None:
        lines.append((source_files.describe() if source_files else "local", "rsync uploads → staging/uploads"))
    lines += [
        ("local", "pg_dump --format=custom --snapshot=<exported> --dbname=<source> → backups/timetodo-<ts>.tar"),
        ("local", "Redis SCAN + DUMP + PTTL, staged uploads, manifest.json → the same archive"),
    ]
    return lines


async def run(ctx: Context) -> dict[str, Any]:
    await pull_files(ctx, live=True)  # before the freeze: uploads deleted meanwhile are not an error
    sources = DataSources(ctx.secrets.source_database_url, ctx.secrets.source_redis_url, staging_dir(ctx))
    async with ctx.activity("backup: database (pg_dump -Fc, one snapshot), Redis, uploads → archive"):
        created = await create_backup(sources, ctx.work_dir / "backups")
    counts = created.manifest.counts
    ctx.console.print(f"backup written to {created.path} ({counts.files} files); check it: timetodo backup verify")
    return {
        "archive": str(created.path),
        "rows": created.manifest.total_rows,
        "keys": counts.redis_keys or 0,
        "files": counts.files,
        "bytes": created.size,
    }
