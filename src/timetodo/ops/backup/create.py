"""`create_backup`: one archive of the database, Redis and the uploads, written under a temporary name and renamed
when complete. PostgreSQL row counts are taken in the exported snapshot pg_dump dumps, so the manifest describes
exactly the dump even while the application keeps writing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from timetodo import __version__
from timetodo.core.fs import PRIVATE_FILE, private_dir
from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.backup.manifest import (
    MANIFEST_NAME,
    PG_PART,
    REDIS_PART,
    UPLOADS_PART,
    UPLOADS_PREFIX,
    BackupConfigError,
    BackupError,
    Counts,
    CreateResult,
    DatabaseInfo,
    DatabasePart,
    Manifest,
    PartInfo,
    ProgressCallback,
    ProgressUpdate,
    database_kind,
    new_archive_path,
    prune_archives,
    reporter,
    unreachable,
)
from timetodo.ops.backup.sqlite import backup_sqlite
from timetodo.ops.sources import DataSources


async def _backup_postgres(
    sources: DataSources, writer: fileops.TarWriter, progress: ProgressCallback | None
) -> DatabasePart:
    target = pg.PgTarget.from_url(sources.database_url)
    add = reporter(progress, "database", None)

    def dump(snapshot: str) -> fileops.Member:
        with writer.member(PG_PART) as out:
            pg.dump(target, out.write, snapshot, add)
        return writer.members[-1]

    try:
        async with pg.exported_snapshot(target) as (conn, snapshot):
            # pg_dump streams into the archive while the rows are counted in the very same snapshot
            dumping = asyncio.ensure_future(asyncio.to_thread(dump, snapshot))
            try:
                version = str(await conn.fetchval("SHOW server_version"))
                tables = await pg.count_rows(conn)
                revision = await pg.fetch_optional(conn, "SELECT version_num FROM alembic_version", "alembic_version")
            finally:
                await asyncio.wait([dumping])
            member = dumping.result()
    except pg.PgUnreachable as exc:
        raise unreachable(exc, "database") from None
    except (pg.PgError, pg.QueryError) as exc:
        raise BackupError(str(exc), part=PG_PART) from None
    if progress is not None:
        progress(ProgressUpdate("database", member.size, member.size))
    return DatabasePart(PG_PART, PartInfo(sha256=member.sha256, size=member.size), tables, revision, version)


async def _backup_redis(
    url: str, writer: fileops.TarWriter, progress: ProgressCallback | None
) -> tuple[PartInfo, redisops.DumpStats]:
    def on_keys(done: int, total: int | None) -> None:
        if progress is not None:
            progress(ProgressUpdate("redis", done, total, "keys"))

    try:
        with writer.member(REDIS_PART) as out:
            stats = await redisops.dump_keys(url, out.write, on_keys=on_keys)
    except redisops.RedisUnreachable as exc:
        raise unreachable(exc, "redis") from None
    except redisops.RedisOpError as exc:
        raise BackupError(str(exc), part=REDIS_PART) from None
    member = writer.members[-1]
    if progress is not None:
        done = stats.keys + stats.skipped
        progress(ProgressUpdate("redis", done, done, "keys"))
    return PartInfo(sha256=member.sha256, size=member.size), stats


def _backup_uploads(
    root: Path, writer: fileops.TarWriter, progress: ProgressCallback | None
) -> tuple[PartInfo, dict[str, str], int]:
    entries = []
    total = 0
    for entry in fileops.iter_files(root):
        try:
            total += entry.path.stat().st_size
        except FileNotFoundError:
            continue
        entries.append(entry)
    add = reporter(progress, "uploads", total)
    hashes: dict[str, str] = {}
    skipped = 0
    size = 0
    for entry in entries:
        try:
            member = writer.add_file(UPLOADS_PREFIX + entry.relpath, entry.path, add)
        except FileNotFoundError:  # deleted since it was listed
            skipped += 1
            continue
        hashes[entry.relpath] = member.sha256
        size += member.size
    return PartInfo(sha256=fileops.tree_digest(hashes), size=size), hashes, skipped


async def _write_parts(
    sources: DataSources,
    writer: fileops.TarWriter,
    scratch: Path,
    created_at: datetime,
    progress: ProgressCallback | None,
) -> Manifest:
    """Database, Redis, uploads and (last) the manifest into `writer`; the manifest written."""
    if sources.is_sqlite:
        db = await asyncio.to_thread(backup_sqlite, sources, writer, scratch, progress)
    else:
        db = await _backup_postgres(sources, writer, progress)
    parts = {db.name: db.info}
    redis_stats: redisops.DumpStats | None = None
    if sources.redis_url:
        parts[REDIS_PART], redis_stats = await _backup_redis(sources.redis_url, writer, progress)
    uploads, hashes, files_skipped = await asyncio.to_thread(_backup_uploads, sources.uploads_dir, writer, progress)
    parts[UPLOADS_PART] = uploads
    manifest = Manifest(
        created_at=created_at,
        app_version=__version__,
        alembic_revision=db.revision,
        database=DatabaseInfo(kind=database_kind(sources), server_version=db.server_version),
        parts=parts,
        counts=Counts(
            tables=db.tables,
            redis_keys=None if redis_stats is None else redis_stats.keys,
            redis_skipped=None if redis_stats is None else redis_stats.skipped,
            files=len(hashes),
            files_skipped=files_skipped,
        ),
        files=hashes,
    )
    writer.add_bytes(MANIFEST_NAME, manifest.to_json())
    return manifest


async def create_backup(
    sources: DataSources,
    directory: Path,
    *,
    keep: int | None = None,
    progress: ProgressCallback | None = None,
) -> CreateResult:
    """Write one archive of the database, Redis (when configured) and the uploads into `directory`
    (the CLI defaults it to `$DATA_DIR/backups`); then, with `keep`, delete the oldest archives beyond that many.

    The archive is written as `.<name>.partial`, fsynced and renamed: a crash never leaves something that looks
    like a backup."""
    started = time.monotonic()
    if keep is not None and keep < 1:
        raise BackupConfigError("--keep must be at least 1")
    folder = directory
    try:
        private_dir(folder)
    except OSError as exc:
        raise BackupConfigError(f"cannot create the backup folder {folder}: {exc.strerror}") from None
    created_at = datetime.now(UTC).replace(microsecond=0)
    final = new_archive_path(folder, created_at)
    partial = folder / f".{final.name}.partial"
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.stem}-", dir=folder))
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "wb") as fh:
            writer = fileops.TarWriter(fh)
            manifest = await _write_parts(sources, writer, scratch, created_at, progress)
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, final)
        fileops.fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    removed = prune_archives(folder, keep, protect=final) if keep is not None else []
    return CreateResult(final, final.stat().st_size, manifest, removed, time.monotonic() - started)
