"""The `timetodo` command line.

Exit codes: 0 success · 1 finished with warnings / not healthy · 2 usage or configuration error ·
3 a dependency (database, Redis) is unreachable · 4 the operation was refused (e.g. an e-mail already taken).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from timetodo import __version__
from timetodo.core.settings import Settings, describe_settings_error

EXIT_OK = 0
EXIT_WARNINGS = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4

app = typer.Typer(help="Time to DO: serve the API and run its operations.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
maintenance_app = typer.Typer(help="Read-only maintenance mode, shared by every instance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(maintenance_app, name="maintenance")
files_app = typer.Typer(help="Uploaded files.", no_args_is_help=True)
app.add_typer(files_app, name="files")
backup_app = typer.Typer(
    help="Backup archives: the database, every Redis key and the uploaded files in one file.", no_args_is_help=True
)
app.add_typer(backup_app, name="backup")
from timetodo.ops.migration.cli import migrate_app  # noqa: E402 - the command groups are assembled here

app.add_typer(migrate_app, name="migrate")

err_console = Console(stderr=True)
out_console = Console()
T = TypeVar("T")


def fail(message: str, hint: str | None = None, code: int = EXIT_CONFIG) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", highlight=False)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:
        fail(
            f"invalid configuration: {describe_settings_error(exc)}",
            "fix the environment variable (or .env entry) named above",
        )


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except (OperationalError, DBAPIError, OSError) as exc:
        fail(f"database unreachable: {str(exc).splitlines()[0][:300]}", "check DATABASE_URL", EXIT_UNREACHABLE)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out_console.print(__version__)
        raise typer.Exit(EXIT_OK)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    migrate: Annotated[bool, typer.Option(help="Apply pending migrations before serving.")] = True,
) -> None:
    """Serve the API (applies pending migrations first unless --no-migrate).

    Example: timetodo serve --host 0.0.0.0 --port 8000 --workers 4
    """
    settings = load_settings()
    if problem := settings.serving_problem(host):
        fail(problem)
    from timetodo.core.logging import configure_logging

    configure_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    if migrate:
        from timetodo.core.schema import upgrade

        _migrate_or_fail(lambda: upgrade(settings.DATABASE_URL))
    if workers > 1:
        prom_dir = settings.DATA_DIR / "prometheus"
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir.resolve())
    import uvicorn

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    err_console.print(f"Time to DO {__version__}: API docs at http://{shown}:{port}/docs", highlight=False)
    uvicorn.run(
        "timetodo.main:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        proxy_headers=True,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
        timeout_graceful_shutdown=settings.GRACEFUL_SHUTDOWN_SECONDS,
        access_log=False,
        log_config=None,
        server_header=False,
    )


def _migrate_or_fail(step: Callable[[], Any]) -> None:
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        step()
    except (OperationalError, DBAPIError, OSError) as exc:
        fail(f"database unreachable: {str(exc).splitlines()[0][:300]}", "check DATABASE_URL", EXIT_UNREACHABLE)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: head). Example: timetodo db upgrade"""
    settings = load_settings()
    from timetodo.core.schema import upgrade

    _migrate_or_fail(lambda: upgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Revert migrations down to REVISION. Example: timetodo db downgrade -1"""
    settings = load_settings()
    from timetodo.core.schema import downgrade

    _migrate_or_fail(lambda: downgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the applied revision and the head. Exit 1 when they differ. Example: timetodo db current"""
    settings = load_settings()
    from timetodo.core.database import create_engine
    from timetodo.core.schema import current_revision, head_revision

    async def read() -> str | None:
        engine = create_engine(settings, pooled=False)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    current = run_async(read)
    head = head_revision()
    out_console.print(f"current: {current or 'none'}\nhead:    {head}", highlight=False)
    if current != head:
        raise typer.Exit(EXIT_WARNINGS)


async def _with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from timetodo.core.database import create_engine, create_sessionmaker

    engine = create_engine(settings, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            return await work(session)
    finally:
        await engine.dispose()


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="E-mail (login name).")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the user admin rights.")] = False,
    timezone: Annotated[str, typer.Option(help="IANA time zone.")] = "UTC",
    password_env: Annotated[
        str, typer.Option(help="Read the password from this environment variable instead of a prompt.")
    ] = "TIMETODO_PASSWORD",
) -> None:
    """Create a user. Example: TIMETODO_PASSWORD=... timetodo user create admin@example.com --admin"""
    from pydantic import TypeAdapter, ValidationError

    from timetodo.auth.schemas import RegisterIn

    settings = load_settings()
    password = os.environ.get(password_env)
    if password is None:
        if not sys.stdin.isatty():
            fail(f"no password: set {password_env} or run in a terminal to be asked")
        password = getpass.getpass("Password: ")
    try:
        data = TypeAdapter(RegisterIn).validate_python({"email": email, "password": password, "timezone": timezone})
    except ValidationError as exc:
        fail(describe_settings_error(exc))

    async def work(session: Any) -> Any:
        from timetodo.auth.service import create_user
        from timetodo.core.errors import AppError

        try:
            return await create_user(session, data.email, data.password, timezone=data.timezone, is_admin=admin)
        except AppError as exc:
            fail(str(exc.detail), code=EXIT_REFUSED)

    user = run_async(lambda: _with_session(settings, work))
    out_console.print(f"created user {user.id} {user.email}{' (admin)' if admin else ''}", highlight=False)


def _maintenance(enabled: bool | None, reason: str | None) -> None:
    settings = load_settings()

    async def work(session: Any) -> Any:
        from timetodo.core.maintenance import get_status, set_maintenance

        if enabled is None:
            return await get_status(session)
        return await set_maintenance(session, enabled, reason)

    status = run_async(lambda: _with_session(settings, work))
    state = "on" if status.enabled else "off"
    extra = f" ({status.reason})" if status.reason else ""
    out_console.print(f"maintenance {state}{extra} since {status.changed_at.isoformat()}", highlight=False)


@maintenance_app.command("on")
def maintenance_on(reason: Annotated[str | None, typer.Option(help="Shown to admins.")] = None) -> None:
    """Refuse writes on every instance. When this returns, no later write commits.
    Example: timetodo maintenance on --reason "moving to a new host"
    """
    _maintenance(True, reason)


@maintenance_app.command("off")
def maintenance_off() -> None:
    """Accept writes again. Example: timetodo maintenance off"""
    _maintenance(False, None)


@maintenance_app.command("status")
def maintenance_status() -> None:
    """Print whether maintenance mode is on. Example: timetodo maintenance status"""
    _maintenance(None, None)


@files_app.command("verify")
def files_verify(
    delete_orphans: Annotated[
        bool,
        typer.Option("--delete-orphans", help="Also remove files no attachment refers to, and stale partial uploads."),
    ] = False,
) -> None:
    """Re-hash every stored file and report missing, corrupt and orphaned ones. Exit 1 when any is found.

    Example: timetodo files verify
    """
    settings = load_settings()

    async def work(session: Any) -> Any:
        from timetodo.files.service import verify_files

        return await verify_files(session, settings.UPLOAD_DIR, delete_orphans)

    report = run_async(lambda: _with_session(settings, work))
    out_console.print(
        f"checked {report.checked} files: {report.ok} ok, {len(report.missing)} missing, {len(report.corrupt)} corrupt, "
        f"{len(report.orphaned)} orphaned, {len(report.stale_incoming)} stale partial uploads",
        highlight=False,
    )
    for label, items in (("missing", report.missing), ("corrupt", report.corrupt), ("orphaned", report.orphaned)):
        for sha in items:
            out_console.print(f"  {label}: {sha}", highlight=False)
    if report.removed:
        out_console.print(f"removed {len(report.removed)} orphaned files", highlight=False)
    if not report.healthy:
        raise typer.Exit(EXIT_WARNINGS)


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
    """Run a backup operation with progress bars; map its errors to one line + hint and an exit code."""
    from timetodo.ops.backup import BackupConfigError, BackupError, RestoreRefused, Unreachable

    bars, update = _progress_bars()
    try:
        with bars:
            return asyncio.run(factory(update))  # type: ignore[arg-type]
    except RestoreRefused as exc:
        fail(str(exc), exc.hint, EXIT_REFUSED)
    except Unreachable as exc:
        fail(str(exc), exc.hint, EXIT_UNREACHABLE)
    except BackupConfigError as exc:
        fail(str(exc), exc.hint, EXIT_CONFIG)
    except BackupError as exc:
        fail(str(exc), exc.hint, EXIT_WARNINGS)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", "check the folder, its permissions and free space", EXIT_WARNINGS)


def _counts_summary(manifest: Any) -> str:
    counts = manifest.counts
    parts = [f"{manifest.total_rows:,} rows in {len(counts.tables)} tables"]
    if counts.redis_keys is not None:
        parts.append(f"{counts.redis_keys:,} Redis keys")
    parts.append(f"{counts.files:,} files")
    return ", ".join(parts)


@backup_app.command("create")
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
    result = _run_backup_op(lambda progress: create_backup(settings, to, keep=keep, progress=progress))
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


@backup_app.command("verify")
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
        fail(f"{first}", "the archive cannot be trusted; use another one", EXIT_WARNINGS)
    manifest = result.manifest
    out_console.print(
        f"ok: {archive} ({manifest.database.kind}, taken {manifest.created_at.isoformat()}, "
        f"revision {manifest.alembic_revision or 'none'}): {_counts_summary(manifest)}",
        highlight=False,
        soft_wrap=True,
    )


@backup_app.command("restore")
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

    settings = load_settings()
    result = _run_backup_op(lambda progress: restore_backup(settings, archive, force=force, progress=progress))
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
        fail("the restored data does not match the manifest (see the table above)", code=EXIT_WARNINGS)
    out_console.print(
        f"restore complete in {result.seconds:.1f}s: everything matches the manifest", highlight=False, soft_wrap=True
    )


@backup_app.command("list")
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

    from timetodo.ops.backup import default_backup_dir, list_archives

    folder = directory if directory is not None else default_backup_dir(load_settings())
    if not folder.is_dir():
        fail(f"no such folder: {folder}", "pass the folder the archives are in", EXIT_CONFIG)
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


def main() -> None:
    app()
