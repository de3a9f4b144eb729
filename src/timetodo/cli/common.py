"""What every command group shares: the two consoles, one way to fail (message, hint, exit code), settings, and
running a coroutine with the database errors mapped to EXIT_UNREACHABLE.

The exit codes are the toolkit's one table (`timetodo.ops.errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from timetodo.core.settings import Settings, describe_settings_error
from timetodo.ops.errors import EXIT_ERROR, EXIT_UNREACHABLE, OpsError

err_console = Console(stderr=True)
out_console = Console()
T = TypeVar("T")


def fail(message: str, hint: str | None = None, code: int = EXIT_ERROR) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", highlight=False)
    raise typer.Exit(code)


def fail_with(exc: OpsError) -> NoReturn:
    fail(str(exc), exc.hint, exc.exit_code)


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:
        fail(
            f"invalid configuration: {describe_settings_error(exc)}",
            "fix the environment variable (or .env entry) named above",
        )


def database_unreachable(exc: Exception) -> NoReturn:
    fail(f"database unreachable: {str(exc).splitlines()[0][:300]}", "check DATABASE_URL", EXIT_UNREACHABLE)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except (OperationalError, DBAPIError, OSError) as exc:
        database_unreachable(exc)


def run_sync(step: Callable[[], Any]) -> None:
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        step()
    except (OperationalError, DBAPIError, OSError) as exc:
        database_unreachable(exc)


async def with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from timetodo.core.database import create_engine, create_sessionmaker

    engine = create_engine(settings, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            return await work(session)
    finally:
        await engine.dispose()
