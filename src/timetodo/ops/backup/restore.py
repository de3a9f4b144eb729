"""`restore_backup`: verify, refuse to overwrite data unless forced under maintenance mode, restore the database,
Redis and uploads, then re-count and compare with the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from timetodo.core.fs import private_dir
from timetodo.core.logging import mask_secrets
from timetodo.core.maintenance import read_flag, switch_maintenance
from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.backup.manifest import (
    NON_USER_TABLES,
    PG_PART,
    REDIS_PART,
    UPLOADS_PREFIX,
    ArchiveCorrupt,
    BackupConfigError,
    BackupError,
    Check,
    Manifest,
    Problem,
    ProgressCallback,
    ProgressUpdate,
    RestoreRefused,
    RestoreResult,
    Unreachable,
    database_kind,
    read_member,
    reporter,
    sqlite_path,
    unreachable,
)
from timetodo.ops.backup.sqlite import restore_sqlite, sqlite_counts, sqlite_tables_with_rows
from timetodo.ops.backup.verify import verify_archive
from timetodo.ops.sources import DataSources


@dataclass(frozen=True)
class TargetState:
    exists: bool
    tables_with_rows: list[str]
    maintenance_on: bool | None


@contextlib.asynccontextmanager
async def _connected(sources: DataSources) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the target PostgreSQL database (Unreachable, with the hint, when there is none)."""
    try:
        conn = await pg.connect(pg.PgTarget.from_url(sources.database_url))
    except pg.PgUnreachable as exc:
        raise unreachable(exc, "database") from None
    try:
        yield conn
    finally:
        await conn.close()


async def _maintenance_flag(sources: DataSources) -> bool | None:
    """The target's maintenance flag, read through the app's own function (never SQL of the toolkit's)."""
    try:
        return await read_flag(sources.database_url)
    except (SQLAlchemyError, OSError) as exc:
        raise Unreachable(
            f"cannot read the maintenance flag: {mask_secrets(str(exc).splitlines()[0])}",
            part="database",
            hint="check DATABASE_URL and that the database is running",
        ) from None


async def inspect_target(sources: DataSources) -> TargetState:
    """Does the configured database hold user data, and is maintenance mode on there?"""
    if sources.is_sqlite:
        found = await asyncio.to_thread(sqlite_tables_with_rows, sqlite_path(sources.database_url))
        if found is None:
            return TargetState(False, [], None)
        return TargetState(True, found, await _maintenance_flag(sources))
    async with _connected(sources) as conn:
        rows = await pg.tables_with_rows(conn, NON_USER_TABLES)
    return TargetState(True, rows, await _maintenance_flag(sources))


def _refuse_unless_safe(state: TargetState, force: bool) -> None:
    if not state.tables_with_rows:
        return
    shown = ", ".join(state.tables_with_rows[:5]) + ("…" if len(state.tables_with_rows) > 5 else "")
    if not force:
        raise RestoreRefused(
            f"the target database already has data (in {shown}); nothing was changed",
            part="database",
            hint="restore into an empty database, or stop writes with `timetodo maintenance on` and pass --force "
            "to replace everything in it",
        )
    if state.maintenance_on is not True:
        raise RestoreRefused(
            "the target service may be writing: its database has data and maintenance mode is off; nothing was changed",
            part="database",
            hint="run `timetodo maintenance on` against the target first (every instance stops writing), "
            "then restore with --force",
        )


async def _restore_postgres(
    sources: DataSources, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> None:
    target = pg.PgTarget.from_url(sources.database_url)
    try:
        conn = await pg.connect(target)
        try:
            # tables the archive does not have would survive `pg_restore --clean` and might block its DROPs
            extra = [t for t in await pg.list_tables(conn) if t not in manifest.counts.tables]
            await pg.drop_tables(conn, extra)
        finally:
            await conn.close()
    except pg.PgUnreachable as exc:
        raise unreachable(exc, "database") from None
    except pg.QueryError as exc:
        raise BackupError(f"could not prepare the target: {exc}", part="database") from None
    part = manifest.parts[PG_PART]
    add = reporter(progress, "database", part.size)
    stream = read_member(tf, tf.getmember(PG_PART))
    try:
        await asyncio.to_thread(pg.restore, target, stream, part.sha256, add)
    except pg.PgError as exc:
        raise BackupError(str(exc), part=PG_PART) from None


def _iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    pending = b""
    while chunk := stream.read(fileops.CHUNK):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


async def _restore_redis(
    url: str, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> list[bytes]:
    total = manifest.counts.redis_keys or 0

    def on_keys(done: int) -> None:
        if progress is not None:
            progress(ProgressUpdate("redis", done, total, "keys"))

    if progress is not None:
        progress(ProgressUpdate("redis", 0, total, "keys"))
    try:
        return await redisops.restore_keys(url, _iter_lines(read_member(tf, tf.getmember(REDIS_PART))), on_keys=on_keys)
    except redisops.RedisUnreachable as exc:
        raise unreachable(exc, "redis") from None
    except redisops.RedisOpError as exc:
        raise BackupError(str(exc), part=REDIS_PART) from None
    except ValueError as exc:
        raise ArchiveCorrupt(str(exc), part=REDIS_PART) from None


def _restore_uploads(root: Path, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None) -> None:
    members = [m for m in tf.getmembers() if m.name.startswith(UPLOADS_PREFIX) and m.isfile()]
    add = reporter(progress, "uploads", sum(m.size for m in members))
    for member in members:
        rel = fileops.safe_relpath(member.name[len(UPLOADS_PREFIX) :])
        fileops.write_file_atomic(root, rel, read_member(tf, member), add)


def _count_checks(expected: dict[str, int], actual: dict[str, int]) -> list[Check]:
    checks = []
    for table in sorted(set(expected) | set(actual)):
        exp, act = expected.get(table), actual.get(table)
        checks.append(
            Check(f"rows {table}", "-" if exp is None else str(exp), "missing" if act is None else str(act), exp == act)
        )
    return checks


async def _recount_database(sources: DataSources) -> tuple[dict[str, int], bool | None]:
    if sources.is_sqlite:

        def work() -> dict[str, int]:
            conn = sqlite3.connect(sqlite_path(sources.database_url), timeout=30)
            try:
                return sqlite_counts(conn)
            finally:
                conn.close()

        counts = await asyncio.to_thread(work)
    else:
        async with _connected(sources) as conn:
            counts = await pg.count_rows(conn)
    return counts, await _maintenance_flag(sources)


def _file_checks(root: Path, expected: dict[str, str]) -> tuple[list[Check], int]:
    matching = 0
    wrong: list[str] = []
    for rel, sha in expected.items():
        path = root / rel
        if path.is_file() and fileops.hash_file(path)[0] == sha:
            matching += 1
        else:
            wrong.append(rel)
    extra = sum(1 for entry in fileops.iter_files(root) if entry.relpath not in expected)
    checks = [
        Check("files", str(len(expected)), str(matching), matching == len(expected)),
    ]
    if wrong:
        checks.append(Check("files missing or different", "0", f"{len(wrong)} (e.g. {wrong[0]})", False))
    return checks, extra


async def _keep_maintenance_on(sources: DataSources, archive_name: str) -> None:
    try:
        await switch_maintenance(sources.database_url, True, f"kept on after restoring {archive_name}"[:500])
    except (SQLAlchemyError, OSError) as exc:
        raise BackupError(
            f"restored, but maintenance mode could not be turned back on: {pg.mask_url(str(exc).splitlines()[0])}",
            part="database",
            hint="run `timetodo maintenance on` now if instances must not write yet",
        ) from None


async def _verified_manifest(sources: DataSources, archive: Path, progress: ProgressCallback | None) -> Manifest:
    """The manifest of a verified archive of the same kind of database as the target (else nothing is changed)."""
    verified = await asyncio.to_thread(verify_archive, archive, progress)
    if not verified.ok or verified.manifest is None:
        first = verified.problems[0] if verified.problems else Problem("archive", "could not be verified")
        raise ArchiveCorrupt(f"{first.message}; nothing was restored", part=first.part)
    manifest = verified.manifest
    kind = database_kind(sources)
    if manifest.database.kind != kind:
        raise RestoreRefused(
            f"the archive holds a {manifest.database.kind} database but DATABASE_URL is {kind}; nothing was changed",
            part="database",
            hint="restore into the same kind of database the backup was taken from",
        )
    return manifest


async def _reach_targets(sources: DataSources, restore_redis: bool) -> None:
    """Reach every target before changing any of them."""
    if restore_redis and sources.redis_url:
        try:
            await redisops.key_count(sources.redis_url)
        except redisops.RedisUnreachable as exc:
            raise unreachable(exc, "redis") from None
    try:
        private_dir(sources.uploads_dir)
    except OSError as exc:
        raise BackupConfigError(f"cannot create UPLOAD_DIR {sources.uploads_dir}: {exc.strerror}") from None


async def _restore_redis_checked(
    sources: DataSources, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> Check:
    """Restore the Redis part (when REDIS_URL is set) and count which of its keys are present."""
    expected_keys = str(manifest.counts.redis_keys)
    if sources.redis_url:
        keys = await _restore_redis(sources.redis_url, tf, manifest, progress)
        try:
            present = await redisops.count_present(sources.redis_url, keys)
        except redisops.RedisUnreachable as exc:
            raise unreachable(exc, "redis") from None
        return Check("redis keys", expected_keys, str(present), present == manifest.counts.redis_keys)
    else:
        return Check("redis keys", expected_keys, "not restored: REDIS_URL is not set", False)


async def restore_backup(
    sources: DataSources,
    archive: Path,
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Verify `archive`, check the target is safe to overwrite, restore the database, Redis and uploads, then
    re-count rows, keys and files (re-hashing them) and compare with the manifest.

    Refused (RestoreRefused, nothing changed) when the target database holds user data, unless `force`; even then
    maintenance mode must be on there so that no instance is writing. An empty target needs neither.

    The restored database carries the backup's maintenance flag, except that when maintenance mode was on in the
    target before the restore it is left on (turn it off with `timetodo maintenance off` once satisfied).
    """
    started = time.monotonic()
    from timetodo.core.schema import head_revision

    head = asyncio.ensure_future(asyncio.to_thread(head_revision))  # loads Alembic meanwhile
    manifest = await _verified_manifest(sources, archive, progress)
    kind = manifest.database.kind
    state = await inspect_target(sources)
    _refuse_unless_safe(state, force)
    restore_redis = REDIS_PART in manifest.parts and manifest.counts.redis_keys is not None
    await _reach_targets(sources, restore_redis)

    checks: list[Check] = []
    with tarfile.open(archive, "r:") as tf:
        if kind == "postgresql":
            await _restore_postgres(sources, tf, manifest, progress)
        else:
            await asyncio.to_thread(restore_sqlite, sources, tf, manifest, progress)
        if state.maintenance_on:
            # the restored app_state carries the backup's flag; an operator who stopped writes for the restore
            # keeps them stopped until they say otherwise (and the re-count below is not raced by writers)
            await _keep_maintenance_on(sources, archive.name)
        if restore_redis:
            checks.append(await _restore_redis_checked(sources, tf, manifest, progress))
        await asyncio.to_thread(_restore_uploads, sources.uploads_dir, tf, manifest, progress)

    counts, maintenance = await _recount_database(sources)
    checks = _count_checks(manifest.counts.tables, counts) + checks
    file_checks, extra = await asyncio.to_thread(_file_checks, sources.uploads_dir, manifest.files)
    checks.extend(file_checks)
    return RestoreResult(archive, manifest, checks, maintenance, extra, await head, time.monotonic() - started)
