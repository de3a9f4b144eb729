"""`timetodo files …`: uploaded files."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from timetodo.cli.common import load_settings, out_console, run_async, with_session
from timetodo.ops.errors import EXIT_WARNING

app = typer.Typer(help="Uploaded files.", no_args_is_help=True)


@app.command("verify")
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

    report = run_async(lambda: with_session(settings, work))
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
        raise typer.Exit(EXIT_WARNING)
