"""Where the data is during a migration, for every step: the databases' row counts, the upload folders (source,
local staging copy, target) and the file copy between them (rsync, incremental on both hops)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters.filecopy import copy_tree
from timetodo.ops.adapters.rsync import Place
from timetodo.ops.errors import EXIT_UNREACHABLE, StepError

if TYPE_CHECKING:
    from timetodo.ops.migrate.context import Context


async def connect(url: str) -> asyncpg.Connection:
    try:
        return await pg.connect(pg.PgTarget.from_url(url))
    except pg.PgUnreachable as exc:
        raise StepError(
            str(exc), exc.hint or "check the database URL and that the server accepts this machine", EXIT_UNREACHABLE
        ) from None


async def row_counts(url: str) -> dict[str, int]:
    conn = await connect(url)
    try:
        return await pg.count_rows(conn)
    finally:
        await conn.close()


def sizes(root: Path) -> dict[str, int]:
    return {entry.relpath: entry.path.stat().st_size for entry in fileops.iter_files(root)}


def staging_dir(ctx: Context) -> Path:
    return ctx.work_dir / "staging" / "uploads"


def source_place(ctx: Context) -> Place | None:
    uploads = ctx.config.source.uploads
    if uploads is None:
        return None
    return Place(uploads.path, ctx.source_files_ssh())


def target_place(ctx: Context) -> Place:
    return Place(ctx.config.target_uploads_dir, ctx.target_ssh())


async def pull_files(ctx: Context, *, live: bool = False) -> dict[str, Any] | None:
    """source uploads → local staging (incremental); None when no source uploads are configured. `live`: the
    source is not frozen, files deleted by users during the copy are counted (`vanished`), not an error."""
    src = source_place(ctx)
    if src is None:
        return None
    async with ctx.activity("uploads: source → staging (rsync)"):
        return await copy_tree(src, Place(str(staging_dir(ctx))), live=live)


async def copy_files(ctx: Context, *, live: bool = False) -> dict[str, Any]:
    """source uploads → local staging → target uploads (incremental both hops; --delete keeps them exact).

    `live` (the copy before the freeze): a file a user deletes while it runs vanishes from the source between
    rsync's listing and its transfer; that is counted in `vanished`, not fatal, because the final copy under the
    freeze (`live` False: any vanished file is then an error) makes the uploads exact."""
    pull = await pull_files(ctx, live=live)
    if pull is None:
        return {"files": 0, "bytes": 0, "seconds": 0.0, "skipped": "no source.uploads configured"}
    async with ctx.activity("uploads: staging → target (rsync)"):
        push = await copy_tree(Place(str(staging_dir(ctx))), target_place(ctx))
    await (await ctx.runtime()).own_uploads(ctx.config.target_uploads_dir)
    return {
        "files": push["files"],
        "bytes": push["bytes"],
        "vanished": pull["vanished"],
        "pulled": pull,
        "seconds": pull["seconds"] + push["seconds"],
    }


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"
