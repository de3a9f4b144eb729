"""`timetodo db …`: database schema migrations (Alembic)."""

from __future__ import annotations

from typing import Annotated

import typer

from timetodo.cli.common import load_settings, out_console, run_async, run_sync
from timetodo.ops.errors import EXIT_WARNING

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: head). Example: timetodo db upgrade"""
    settings = load_settings()
    from timetodo.core.schema import upgrade

    run_sync(lambda: upgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Revert migrations down to REVISION. Example: timetodo db downgrade -1"""
    settings = load_settings()
    from timetodo.core.schema import downgrade

    run_sync(lambda: downgrade(settings.DATABASE_URL, revision))
    out_console.print(f"database at {revision}")


@app.command("current")
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
        raise typer.Exit(EXIT_WARNING)
