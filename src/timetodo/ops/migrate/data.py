"""Where the data is during a migration, for every step: the databases' row counts, the upload folders (source,
local staging copy, target) and the file copy between them (rsync, incremental on both hops), and — for the `delta`
and `logical` cutovers — the uploads changed since a recorded pre-pass (`copy_changed_files`).

`copy_changed_files` guarantees: the pre-pass (source live) lists the source *before* its rsync runs, and the
target after them (nothing else writes the held target's uploads: an upload is a write, refused in maintenance).
In the freeze, one listing of the source (one SSH round trip) is compared with both: a file is copied — source to
target in one hop (tar piped through this machine) — when the source's size, mtime (ns) or inode differs from the
pre-pass listing (any rewrite or replacement since) or the target's size or whole-second mtime differs from the
source's (what the pre-pass did not bring over); files the target has and the source no longer has are deleted.
Nothing changed costs that one listing. A second in-freeze pass (a resumed run) and a missing record use the two
rsync hops (`--delete`): a file the first pass copied may since be gone from the source, which no record shows."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters.filecopy import FullListing, copy_listed, copy_tree, delete_listed, list_place
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


def files_record_path(ctx: Context) -> Path:
    return ctx.work_dir / "delta" / "files-record.json"


def files_freeze_path(ctx: Context) -> Path:
    """Written before the in-freeze file pass: a second one does not trust the record."""
    return ctx.work_dir / "delta" / "files-freeze-started"


def _save_listings(path: Path, source: FullListing, target: FullListing) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source, "target": target}))
    tmp.replace(path)


def _load_listings(path: Path) -> tuple[FullListing, FullListing] | None:
    try:
        data = json.loads(path.read_text())
        listings = tuple(
            {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in data[side].items()} for side in ("source", "target")
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return listings[0], listings[1]


def changed_files(before: FullListing, target: FullListing, now: FullListing) -> tuple[list[str], list[str]]:
    """(files to copy, files to delete on the target): see the module docstring."""
    copy = [
        name
        for name, (size, mtime, inode) in now.items()
        if before.get(name) != (size, mtime, inode)
        or name not in target
        or target[name][0] != size
        or target[name][1] // 1_000_000_000 != mtime // 1_000_000_000
    ]
    return sorted(copy), sorted(set(target) - set(now))


async def copy_changed_files(ctx: Context, *, live: bool) -> dict[str, Any]:
    """The uploads part of the `delta` and `logical` cutovers (see the module docstring)."""
    src = source_place(ctx)
    record, started = files_record_path(ctx), files_freeze_path(ctx)
    if src is None:
        return await copy_files(ctx, live=live)
    if live:
        for path in (record, started):
            path.unlink(missing_ok=True)
        before = await list_place(src)
        result = await copy_files(ctx, live=True)
        async with ctx.activity("uploads: the target's listing (the record the freeze compares with)"):
            after = await list_place(target_place(ctx))
        await asyncio.to_thread(_save_listings, record, before, after)
        return {**result, "recorded": len(after)}
    listings = None if started.exists() else await asyncio.to_thread(_load_listings, record)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(str(time.time()))
    if listings is None:
        return await copy_files(ctx, live=False)
    at = time.monotonic()
    async with ctx.activity("uploads: the source's listing, compared with the pre-pass"):
        now = await list_place(src)
    copy, delete = changed_files(*listings, now)
    listed = time.monotonic() - at
    dst = target_place(ctx)
    async with ctx.activity(f"uploads: {len(copy)} changed files source → target (one hop), {len(delete)} deleted"):
        moved = await copy_listed(src, dst, copy)
        await delete_listed(dst, delete)
    if copy:
        await (await ctx.runtime()).own_uploads(ctx.config.target_uploads_dir)
    return {
        "files": moved["files"],
        "bytes": sum(now[name][0] for name in copy),
        "deleted": len(delete),
        "compared": len(now),
        "method": "listing against the pre-pass, tar one hop",
        "list_seconds": round(listed, 3),
        "seconds": round(time.monotonic() - at, 3),
    }
