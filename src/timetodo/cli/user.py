"""`timetodo user …`: manage users."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated, Any

import typer

from timetodo.cli.common import fail, load_settings, out_console, run_async, with_session
from timetodo.core.settings import describe_settings_error
from timetodo.ops.errors import EXIT_REFUSED

app = typer.Typer(help="Manage users.", no_args_is_help=True)


@app.command("create")
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

    user = run_async(lambda: with_session(settings, work))
    out_console.print(f"created user {user.id} {user.email}{' (admin)' if admin else ''}", highlight=False)


def _account_change(email: str, action: str) -> None:
    """Run one account change on the server's database, refused (exit 4) while maintenance mode is on."""
    settings = load_settings()

    async def work(session: Any) -> str:
        from timetodo.admin.service import delete_user, user_id_by_email
        from timetodo.auth.service import set_active
        from timetodo.core.errors import AppError
        from timetodo.core.maintenance import guard_write

        try:
            await guard_write(session, settings.MAINTENANCE_RETRY_AFTER)
            if action == "delete":
                user_id = await user_id_by_email(session, email)
                removed = await delete_user(session, settings, None, user_id, acting_admin=None)
                return f"deleted user {user_id} {email.strip().lower()} and {removed} stored file(s)"
            user = await set_active(session, None, email, action == "activate")
            return f"{action}d user {user.id} {user.email}"
        except AppError as exc:
            fail(str(exc.detail), code=EXIT_REFUSED)

    out_console.print(run_async(lambda: with_session(settings, work)), highlight=False)


@app.command("delete")
def user_delete(
    email: Annotated[str, typer.Argument(help="E-mail of the account.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an account and everything it owns (tasks, projects, time entries, its files, sessions)."""
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to delete without confirmation", "pass --yes", code=EXIT_REFUSED)
        typer.confirm(f"Delete {email} and everything it owns?", abort=True)
    _account_change(email, "delete")


@app.command("deactivate")
def user_deactivate(email: Annotated[str, typer.Argument(help="E-mail of the account.")]) -> None:
    """Block an account: its sessions end, logins are refused; nothing is deleted."""
    _account_change(email, "deactivate")


@app.command("activate")
def user_activate(email: Annotated[str, typer.Argument(help="E-mail of the account.")]) -> None:
    """Allow a deactivated account to log in again."""
    _account_change(email, "activate")
