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
    from timetodo.core.logging import configure_logging

    configure_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    if migrate:
        from timetodo.core.migrations import upgrade

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
    from timetodo.core.migrations import upgrade

    _migrate_or_fail(lambda: upgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Revert migrations down to REVISION. Example: timetodo db downgrade -1"""
    settings = load_settings()
    from timetodo.core.migrations import downgrade

    _migrate_or_fail(lambda: downgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the applied revision and the head. Exit 1 when they differ. Example: timetodo db current"""
    settings = load_settings()
    from timetodo.core.database import create_engine
    from timetodo.core.migrations import current_revision, head_revision

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
        from timetodo.admin.service import get_status, set_maintenance

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


def main() -> None:
    app()
