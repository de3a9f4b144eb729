"""`timetodo maintenance …`: read-only maintenance mode, shared by every instance (`timetodo.core.maintenance`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from timetodo.cli.common import load_settings, out_console, run_async, with_session

app = typer.Typer(help="Read-only maintenance mode, shared by every instance.", no_args_is_help=True)


def _maintenance(enabled: bool | None, reason: str | None) -> None:
    settings = load_settings()

    async def work(session: Any) -> Any:
        from timetodo.core.maintenance import get_status, set_maintenance

        if enabled is None:
            return await get_status(session)
        return await set_maintenance(session, enabled, reason)

    status = run_async(lambda: with_session(settings, work))
    state = "on" if status.enabled else "off"
    extra = f" ({status.reason})" if status.reason else ""
    out_console.print(f"maintenance {state}{extra} since {status.changed_at.isoformat()}", highlight=False)


@app.command("on")
def maintenance_on(reason: Annotated[str | None, typer.Option(help="Shown to admins.")] = None) -> None:
    """Refuse writes on every instance. When this returns, no later write commits.
    Example: timetodo maintenance on --reason "moving to a new host"
    """
    _maintenance(True, reason)


@app.command("off")
def maintenance_off() -> None:
    """Accept writes again. Example: timetodo maintenance off"""
    _maintenance(False, None)


@app.command("status")
def maintenance_status() -> None:
    """Print whether maintenance mode is on. Example: timetodo maintenance status"""
    _maintenance(None, None)
