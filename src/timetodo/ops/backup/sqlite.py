"""The SQLite side of a backup: the online-backup copy (consistent while the app writes), its check, its restore
(written beside the database, fsynced, renamed over it), and what the target holds before a restore.
"""

from __future__ import annotations

import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.backup.manifest import (
    NON_USER_TABLES,
    SQLITE_PART,
    ArchiveCorrupt,
    BackupConfigError,
    BackupError,
    DatabasePart,
    Manifest,
    PartInfo,
    Problem,
    ProgressCallback,
    read_member,
    reporter,
    sqlite_path,
)
from timetodo.ops.sources import DataSources


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {}
    for table in _sqlite_tables(conn):
        counts[table] = int(conn.execute(f"SELECT count(*) FROM {pg.quote_ident(table)}").fetchone()[0])  # noqa: S608
    return counts


def _sqlite_scalar(conn: sqlite3.Connection, sql: str, table: str) -> Any:
    if table not in _sqlite_tables(conn):
        return None
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def backup_sqlite(
    sources: DataSources, writer: fileops.TarWriter, scratch: Path, progress: ProgressCallback | None
) -> DatabasePart:
    source = sqlite_path(sources.database_url)
    if not source.is_file():
        raise BackupConfigError(f"the SQLite database {source} does not exist", hint="check DATABASE_URL / DATA_DIR")
    copy = scratch / "database.sqlite"
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(copy)
        try:
            # one step: a single read transaction, so the copy is consistent; in WAL mode writers are not blocked
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # a standalone file (the app switches it back to WAL)
            tables = sqlite_counts(dst)
            revision = _sqlite_scalar(dst, "SELECT version_num FROM alembic_version", "alembic_version")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup failed: {exc}", part=SQLITE_PART) from None
    finally:
        src.close()
    size = copy.stat().st_size
    add = reporter(progress, "database", size)
    member = writer.add_file(SQLITE_PART, copy, add)
    copy.unlink()
    return DatabasePart(
        SQLITE_PART, PartInfo(sha256=member.sha256, size=member.size), tables, revision, sqlite3.sqlite_version
    )


def verify_sqlite(stream: fileops.Readable, manifest: Manifest, problems: list[Problem]) -> tuple[str, int]:
    with tempfile.TemporaryDirectory(prefix="ttd-verify-") as tmp:
        copy = Path(tmp) / "check.sqlite"
        with copy.open("wb") as out:
            digest = fileops.copy_stream(stream, out)
        if digest[0] != manifest.parts[SQLITE_PART].sha256:
            return digest
        try:
            conn = sqlite3.connect(copy)
            try:
                result = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
                if result != ["ok"]:
                    problems.append(Problem(SQLITE_PART, f"integrity check failed: {'; '.join(result[:3])}"))
                    return digest
                counts = sqlite_counts(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            problems.append(Problem(SQLITE_PART, f"not a readable SQLite database: {exc}"))
            return digest
        if counts != manifest.counts.tables:
            diffs = [
                f"{t} {manifest.counts.tables.get(t, '-')}≠{counts.get(t, '-')}"
                for t in sorted(set(counts) | set(manifest.counts.tables))
                if counts.get(t) != manifest.counts.tables.get(t)
            ]
            problems.append(Problem(SQLITE_PART, f"row counts differ from the manifest: {', '.join(diffs[:5])}"))
        return digest


def sqlite_tables_with_rows(path: Path) -> list[str] | None:
    """User tables holding rows in the SQLite database at `path`; None when there is no such file."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [
            t
            for t in _sqlite_tables(conn)
            if t not in NON_USER_TABLES
            and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {pg.quote_ident(t)})").fetchone()[0]  # noqa: S608
        ]
    except sqlite3.DatabaseError as exc:
        raise BackupConfigError(f"the target {path} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()


def restore_sqlite(
    sources: DataSources, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> None:
    target = sqlite_path(sources.database_url)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = manifest.parts[SQLITE_PART]
    add = reporter(progress, "database", part.size)
    tmp = target.with_name(f".{target.name}.restore-tmp")
    try:
        with tmp.open("wb") as out:
            sha, _ = fileops.copy_stream(read_member(tf, tf.getmember(SQLITE_PART)), out, add)
            out.flush()
            os.fsync(out.fileno())
        if sha != part.sha256:
            raise ArchiveCorrupt(
                "changed since it was verified (sha256 mismatch); nothing was replaced", part=SQLITE_PART
            )
        # an old WAL left next to the new file would be replayed into it
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        fileops.fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
