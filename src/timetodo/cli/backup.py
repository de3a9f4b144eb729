"""`timetodo backup …`: backup archives (`timetodo.ops.backup`): create, verify, restore, list."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from timetodo.cli.common import err_console, fail, fail_with, load_settings, out_console
from timetodo.core.settings import Settings
from timetodo.ops.errors import EXIT_ERROR, EXIT_WARNING, OpsError
from timetodo.ops.sources import DataSources

app = typer.Typer(
    help="Backup archives: the database, every Redis key and the uploaded files in one file.", no_args_is_help=True
)
T = TypeVar("T")


def default_backup_dir(settings: Settings) -> Path:
    return settings.DATA_DIR / "backups"


def _progress_bars() -> tuple[Any, Callable[[Any], None]]:
    """Rich progress bars on stderr, one per part (database, redis, uploads, verify); off when not a terminal."""
    from rich.filesize import decimal
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    bars = Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def update(event: Any) -> None:
        def amount(n: int) -> str:
            return decimal(n) if event.unit == "bytes" else f"{n:,} {event.unit}"

        detail = amount(event.done) + ("" if event.total is None else f" / {amount(event.total)}")
        if event.part not in tasks:
            tasks[event.part] = bars.add_task(event.part, total=event.total, detail=detail)
        bars.update(tasks[event.part], completed=event.done, total=event.total, detail=detail)

    return bars, update


def _run_backup_op(factory: Callable[[Callable[[Any], None]], Awaitable[T]]) -> T:
    """Run a backup operation with progress bars; its errors become one line + hint and their exit code."""
    bars, update = _progress_bars()
    try:
        with bars:
            return asyncio.run(factory(update))  # type: ignore[arg-type]
    except OpsError as exc:
        fail_with(exc)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", "check the folder, its permissions and free space", EXIT_WARNING)


def _counts_summary(manifest: Any) -> str:
    counts = manifest.counts
    parts = [f"{manifest.total_rows:,} rows in {len(counts.tables)} tables"]
    if counts.redis_keys is not None:
        parts.append(f"{counts.redis_keys:,} Redis keys")
    parts.append(f"{counts.files:,} files")
    return ", ".join(parts)


@app.command("create")
def backup_create(
    to: Annotated[
        Path | None, typer.Option("--to", help="Folder for the archive (default: $DATA_DIR/backups).")
    ] = None,
    keep: Annotated[
        int | None, typer.Option("--keep", min=1, help="Then delete the oldest archives beyond the newest N.")
    ] = None,
) -> None:
    """Write one archive: database, Redis keys with their TTLs, uploaded files, and a manifest of hashes and counts.

    Example: timetodo backup create --to /var/backups/timetodo --keep 14

    Nightly (cron): 30 3 * * * cd /srv/timetodo && .venv/bin/timetodo backup create --keep 14 >>logs/backup.log 2>&1
    """
    from rich.filesize import decimal

    from timetodo.ops.backup import create_backup

    settings = load_settings()
    folder = to if to is not None else default_backup_dir(settings)
    sources = DataSources.from_settings(settings)
    result = _run_backup_op(lambda progress: create_backup(sources, folder, keep=keep, progress=progress))
    counts = result.manifest.counts
    out_console.print(
        f"created {result.path} ({decimal(result.size)} in {result.seconds:.1f}s): {_counts_summary(result.manifest)}",
        highlight=False,
        soft_wrap=True,
    )
    skipped = (counts.redis_skipped or 0) + counts.files_skipped
    if skipped:
        out_console.print(
            f"note: {counts.redis_skipped or 0} Redis keys and {counts.files_skipped} files vanished while they were "
            "copied (expired or deleted) and are not in the archive",
            highlight=False,
            soft_wrap=True,
        )
    for path in result.removed:
        out_console.print(f"removed old archive {path}", highlight=False, soft_wrap=True)


@app.command("verify")
def backup_verify(archive: Annotated[Path, typer.Argument(help="The archive (.tar) to check.")]) -> None:
    """Check an archive without restoring it (hashes, sizes, files, database part). Exit 1 when anything is wrong.

    Example: timetodo backup verify data/backups/timetodo-20250101T033000Z.tar
    """
    from timetodo.ops.backup import verify_archive

    async def work(progress: Callable[[Any], None]) -> Any:
        return await asyncio.to_thread(verify_archive, archive, progress)

    result = _run_backup_op(work)
    if not result.ok:
        for problem in result.problems[1:]:
            err_console.print(f"[red]also:[/] {problem}", highlight=False)
        first = result.problems[0] if result.problems else "archive: could not be verified"
        fail(f"{first}", "the archive cannot be trusted; use another one", EXIT_WARNING)
    manifest = result.manifest
    out_console.print(
        f"ok: {archive} ({manifest.database.kind}, taken {manifest.created_at.isoformat()}, "
        f"revision {manifest.alembic_revision or 'none'}): {_counts_summary(manifest)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("restore")
def backup_restore(
    archive: Annotated[Path, typer.Argument(help="The archive (.tar) to restore.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a database that has data (maintenance mode must be on there)."),
    ] = False,
) -> None:
    """Verify, restore database + Redis + uploads, then re-count and compare with the manifest. 1: differs, 4: refused.

    Refused when the target database has data, unless --force; even then maintenance mode must be on there.

    Example: timetodo maintenance on && timetodo backup restore data/backups/timetodo-20250101T033000Z.tar --force
    """
    from rich.table import Table

    from timetodo.ops.backup import restore_backup

    sources = DataSources.from_settings(load_settings())
    result = _run_backup_op(lambda progress: restore_backup(sources, archive, force=force, progress=progress))
    table = Table(title=f"restored {archive.name}", title_justify="left")
    table.add_column("item")
    table.add_column("expected", justify="right")
    table.add_column("actual", justify="right")
    table.add_column("")
    for check in result.checks:
        table.add_row(check.item, check.expected, check.actual, "[green]ok[/]" if check.ok else "[red]DIFFERS[/]")
    out_console.print(table)
    if result.extra_files:
        out_console.print(
            f"note: {result.extra_files} files in UPLOAD_DIR are not in the archive (left in place)", highlight=False
        )
    if result.schema_behind:
        out_console.print(
            f"hint: the restored schema is at revision {result.manifest.alembic_revision}, this version of timetodo "
            f"expects {result.head_revision}: run `timetodo db upgrade` (or restore with the version that took it)",
            highlight=False,
            soft_wrap=True,
        )
    if result.maintenance_on:
        out_console.print(
            "hint: maintenance mode is on in the restored database (it was on when the backup was taken, or you "
            "turned it on before restoring): run `timetodo maintenance off` to accept writes again",
            highlight=False,
            soft_wrap=True,
        )
    if not result.ok:
        fail("the restored data does not match the manifest (see the table above)", code=EXIT_WARNING)
    out_console.print(
        f"restore complete in {result.seconds:.1f}s: everything matches the manifest", highlight=False, soft_wrap=True
    )


@app.command("list")
def backup_list(
    directory: Annotated[
        Path | None, typer.Argument(help="Folder to list (default: $DATA_DIR/backups).", show_default=False)
    ] = None,
) -> None:
    """List the archives in a folder, newest first, with their size, database kind and counts.

    Example: timetodo backup list /var/backups/timetodo
    """
    from rich.filesize import decimal
    from rich.table import Table

    from timetodo.ops.backup import list_archives

    folder = directory if directory is not None else default_backup_dir(load_settings())
    if not folder.is_dir():
        fail(f"no such folder: {folder}", "pass the folder the archives are in", EXIT_ERROR)
    archives = list_archives(folder)
    if not archives:
        out_console.print(f"no archives in {folder}", highlight=False)
        return
    rows: list[tuple[str, str, str, str, str]] = []
    for info in archives:
        created = info.created_at.strftime("%Y-%m-%d %H:%M") if info.created_at else "?"
        if info.manifest is None:
            rows.append((info.path.name, created, decimal(info.size), "?", f"unreadable: {info.error}"))
        else:
            counts = info.manifest.counts
            keys = "" if counts.redis_keys is None else f", {counts.redis_keys:,} keys"
            summary = f"{info.manifest.total_rows:,} rows{keys}, {counts.files:,} files"
            rows.append((info.path.name, created, decimal(info.size), info.manifest.database.kind, summary))
    if not out_console.is_terminal:  # one tab-separated line per archive for scripts
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    table = Table(title=str(folder), title_justify="left")
    table.add_column("archive (named by its UTC time)", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("database", no_wrap=True)
    table.add_column("contents")
    for name, _created, size, db_kind, summary in rows:
        table.add_row(name, size, db_kind, summary, style="red" if db_kind == "?" else None)
    out_console.print(table)
