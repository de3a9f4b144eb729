"""The `timetodo` command line: one module per command group, assembled here.

| group | module | what |
| --- | --- | --- |
| `serve` | `serve` | the API under uvicorn |
| `db` | `db` | schema migrations (Alembic) |
| `user` | `user` | users |
| `maintenance` | `maintenance` | read-only maintenance mode |
| `files` | `files` | uploaded files |
| `backup` | `backup` | backup archives (`timetodo.ops.backup`) |
| `migrate` | `migrate` | moving to a new host (`timetodo.ops.migrate`) |
| `nginx` | `nginx` | the nginx configuration (`timetodo.ops.adapters.nginx`) |

Exit codes: one table for every command (`timetodo.ops.errors`): 0 success · 1 finished with warnings / not
healthy / backup failed · 2 usage or configuration error · 3 a dependency (database, Redis, host) is unreachable ·
4 the operation was refused · 5 verification failed · 6 over the downtime budget.
"""

from __future__ import annotations

from typing import Annotated

import typer

from timetodo import __version__
from timetodo.cli import backup, db, files, maintenance, migrate, nginx, serve, user
from timetodo.cli.common import out_console
from timetodo.ops.errors import EXIT_OK
from timetodo.telegram import cli as telegram_cli

app = typer.Typer(help="Time to DO: serve the API and run its operations.", no_args_is_help=True)
app.registered_commands += serve.app.registered_commands
for _name, _group in (
    ("db", db.app),
    ("user", user.app),
    ("maintenance", maintenance.app),
    ("files", files.app),
    ("backup", backup.app),
    ("migrate", migrate.app),
    ("nginx", nginx.app),
    ("telegram", telegram_cli.app),
):
    app.add_typer(_group, name=_name)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out_console.print(__version__)
        raise typer.Exit(EXIT_OK)


def main() -> None:
    app()
