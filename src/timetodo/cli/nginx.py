"""`timetodo nginx render …`: print the nginx configuration for Time to DO instances behind nginx.

The options are those of the renderer's own entry point (`python -m timetodo.ops.nginx`, kept as an alias):
`timetodo nginx render --help` lists them.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="The nginx configuration in front of the instances.", no_args_is_help=True)


@app.command(
    "render",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def render(ctx: typer.Context) -> None:
    """Print the configuration. Example: timetodo nginx render --upstream 127.0.0.1:8001 --listen 8080 > nginx.conf"""
    from timetodo.ops.nginx import main

    raise typer.Exit(main(ctx.args, prog="timetodo nginx render"))
