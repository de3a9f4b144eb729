"""Backup archives of a Time to DO installation: create, verify, restore and list, usable without the CLI.

One archive is one uncompressed tar (`timetodo-YYYYmmddTHHMMSSZ.tar`; pg_dump's custom format is already
compressed) holding:

- `database.pgdump` (pg_dump -Fc, taken in an exported snapshot that the row counts share) or `database.sqlite`
  (SQLite online-backup API: consistent while the application writes);
- `redis.jsonl` when REDIS_URL is set: every key of its database with the TTL it had left (see `ops.redis`);
- `uploads/<path>`: every file under UPLOAD_DIR except uploads in progress (`.incoming/`);
- `manifest.json` (last): versions, the sha256 and size of every part, rows per table, key and file counts and the
  sha256 of every file.

The archive is written under a temporary name in the target folder and renamed when complete, so a crash never
leaves something that looks like a backup.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from timetodo import __version__
from timetodo.core.settings import Settings
from timetodo.ops import files as fileops
from timetodo.ops import postgres as pg
from timetodo.ops import redis as redisops

FORMAT = "timetodo-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PG_PART = "database.pgdump"
SQLITE_PART = "database.sqlite"
REDIS_PART = "redis.jsonl"
UPLOADS_PART = "uploads"
UPLOADS_PREFIX = "uploads/"
NON_USER_TABLES = frozenset({"alembic_version", "app_state"})
ARCHIVE_RE = re.compile(r"^timetodo-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar$")
MAX_MANIFEST_BYTES = 512 * 1024 * 1024

DatabaseKind = Literal["postgresql", "sqlite"]


# ---------------------------------------------------------------------------------------------------------- errors


class BackupError(Exception):
    """A backup operation failed. `part` names the archive part or service concerned; messages hold no secrets."""

    def __init__(self, message: str, *, part: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.part = part
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.part}: {self.message}" if self.part else self.message


class ArchiveCorrupt(BackupError):
    """The archive is unreadable, incomplete or does not match its manifest."""


class RestoreRefused(BackupError):
    """The restore would overwrite data or race a writing service; nothing was changed."""


class Unreachable(BackupError):
    """PostgreSQL or Redis could not be reached."""


class BackupConfigError(BackupError):
    """The settings or arguments cannot work (no such archive, in-memory database, …)."""


# -------------------------------------------------------------------------------------------------------- progress


Unit = Literal["bytes", "keys", "files"]


@dataclass(frozen=True)
class ProgressUpdate:
    part: str
    done: int
    total: int | None
    unit: Unit = "bytes"


ProgressCallback = Callable[[ProgressUpdate], None]


def _reporter(
    progress: ProgressCallback | None, part: str, total: int | None, unit: Unit = "bytes"
) -> Callable[[int], None]:
    """A byte/key counter bound to one part; returns `add(n)` (no-op without a callback)."""
    state = {"done": 0}

    def add(n: int) -> None:
        state["done"] += n
        if progress is not None:
            progress(ProgressUpdate(part, state["done"], total, unit))

    if progress is not None:
        progress(ProgressUpdate(part, 0, total, unit))
    return add


# -------------------------------------------------------------------------------------------------------- manifest


class PartInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class DatabaseInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: DatabaseKind
    server_version: str


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tables: dict[str, int]
    redis_keys: int | None = None
    redis_skipped: int | None = None
    files: int = 0
    files_skipped: int = 0


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["timetodo-backup"] = "timetodo-backup"
    format_version: int = FORMAT_VERSION
    created_at: datetime
    app_version: str
    alembic_revision: str | None
    database: DatabaseInfo
    parts: dict[str, PartInfo]
    counts: Counts
    files: dict[str, str] = {}

    @property
    def database_part(self) -> str:
        return PG_PART if self.database.kind == "postgresql" else SQLITE_PART

    @property
    def total_rows(self) -> int:
        return sum(self.counts.tables.values())

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check a manifest; ArchiveCorrupt with a one-line reason otherwise."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise ArchiveCorrupt(f"does not parse ({where}: {first['msg']})", part=MANIFEST_NAME) from None
    if manifest.format_version > FORMAT_VERSION:
        raise ArchiveCorrupt(
            f"format version {manifest.format_version} is newer than this timetodo understands ({FORMAT_VERSION})",
            part=MANIFEST_NAME,
            hint="restore with the timetodo version that wrote the archive or a newer one",
        )
    if manifest.database_part not in manifest.parts:
        raise ArchiveCorrupt(f"lists no {manifest.database_part} part", part=MANIFEST_NAME)
    return manifest


# ----------------------------------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class CreateResult:
    path: Path
    size: int
    manifest: Manifest
    removed: list[Path]
    seconds: float


@dataclass(frozen=True)
class Problem:
    part: str
    message: str

    def __str__(self) -> str:
        return f"{self.part}: {self.message}"


@dataclass
class VerifyResult:
    path: Path
    size: int
    manifest: Manifest | None
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.manifest is not None


@dataclass(frozen=True)
class Check:
    item: str
    expected: str
    actual: str
    ok: bool


@dataclass
class RestoreResult:
    path: Path
    manifest: Manifest
    checks: list[Check]
    maintenance_on: bool | None
    extra_files: int
    head_revision: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def schema_behind(self) -> bool:
        return self.head_revision is not None and self.manifest.alembic_revision != self.head_revision


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    created_at: datetime | None
    size: int
    manifest: Manifest | None
    error: str | None


# ---------------------------------------------------------------------------------------------------------- helpers


def database_kind(settings: Settings) -> DatabaseKind:
    return "sqlite" if settings.is_sqlite else "postgresql"


def sqlite_path(database_url: str) -> Path:
    rest = database_url.split(":///", 1)[1] if ":///" in database_url else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        raise BackupConfigError("DATABASE_URL is an in-memory SQLite database: there is no file to back up or restore")
    return Path(rest)


def default_backup_dir(settings: Settings) -> Path:
    return settings.DATA_DIR / "backups"


def _archive_key(path: Path) -> tuple[str, int]:
    match = ARCHIVE_RE.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 1)


def archives_in(directory: Path) -> list[Path]:
    """Archives in `directory` (by name pattern), oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if ARCHIVE_RE.match(p.name) and p.is_file()]
    return sorted(found, key=_archive_key)


def _new_archive_path(directory: Path, when: datetime) -> Path:
    """`timetodo-<UTC stamp>.tar`, or `-2`, `-3`… after the archives (and runs in progress) of the same second, so
    that a new archive always sorts as the newest."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    taken = 0
    for path in directory.iterdir():
        match = ARCHIVE_RE.match(path.name.removeprefix(".").removesuffix(".partial"))
        if match and match.group(1) == stamp:
            taken = max(taken, int(match.group(2) or 1))
    return directory / (f"timetodo-{stamp}.tar" if taken == 0 else f"timetodo-{stamp}-{taken + 1}.tar")


def prune_archives(directory: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete the oldest archives beyond the newest `keep` (never `protect`); returns what was removed."""
    if keep < 1:
        raise BackupConfigError("--keep must be at least 1")
    archives = [p for p in archives_in(directory) if protect is None or p.name != protect.name]
    doomed = archives[: max(0, len(archives) - (keep - (1 if protect is not None else 0)))]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def _sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {}
    for table in _sqlite_tables(conn):
        counts[table] = int(conn.execute(f"SELECT count(*) FROM {pg.quote_ident(table)}").fetchone()[0])  # noqa: S608
    return counts


def _sqlite_scalar(conn: sqlite3.Connection, sql: str, table: str) -> Any:
    if table not in _sqlite_tables(conn):
        return None
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _unreachable(exc: pg.PgUnreachable | redisops.RedisUnreachable, part: str) -> Unreachable:
    hint = "check DATABASE_URL and that PostgreSQL is running" if part == "database" else "check REDIS_URL"
    return Unreachable(str(exc), part=part, hint=hint)


# ----------------------------------------------------------------------------------------------------------- create


@dataclass
class _DatabasePart:
    name: str
    info: PartInfo
    tables: dict[str, int]
    revision: str | None
    server_version: str


async def _backup_postgres(
    settings: Settings, writer: fileops.TarWriter, progress: ProgressCallback | None
) -> _DatabasePart:
    target = pg.PgTarget.from_url(settings.DATABASE_URL)
    add = _reporter(progress, "database", None)

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
        raise _unreachable(exc, "database") from None
    except (pg.PgError, pg.QueryError) as exc:
        raise BackupError(str(exc), part=PG_PART) from None
    if progress is not None:
        progress(ProgressUpdate("database", member.size, member.size))
    return _DatabasePart(PG_PART, PartInfo(sha256=member.sha256, size=member.size), tables, revision, version)


def _backup_sqlite(
    settings: Settings, writer: fileops.TarWriter, scratch: Path, progress: ProgressCallback | None
) -> _DatabasePart:
    source = sqlite_path(settings.DATABASE_URL)
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
            tables = _sqlite_counts(dst)
            revision = _sqlite_scalar(dst, "SELECT version_num FROM alembic_version", "alembic_version")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup failed: {exc}", part=SQLITE_PART) from None
    finally:
        src.close()
    size = copy.stat().st_size
    add = _reporter(progress, "database", size)
    member = writer.add_file(SQLITE_PART, copy, add)
    copy.unlink()
    return _DatabasePart(
        SQLITE_PART, PartInfo(sha256=member.sha256, size=member.size), tables, revision, sqlite3.sqlite_version
    )


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
        raise _unreachable(exc, "redis") from None
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
    add = _reporter(progress, "uploads", total)
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


async def create_backup(
    settings: Settings,
    directory: Path | None = None,
    *,
    keep: int | None = None,
    progress: ProgressCallback | None = None,
) -> CreateResult:
    """Write one archive of the database, Redis (when configured) and the uploads into `directory`
    (default `$DATA_DIR/backups`); then, with `keep`, delete the oldest archives beyond that many."""
    started = time.monotonic()
    if keep is not None and keep < 1:
        raise BackupConfigError("--keep must be at least 1")
    folder = directory if directory is not None else default_backup_dir(settings)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupConfigError(f"cannot create the backup folder {folder}: {exc.strerror}") from None
    created_at = datetime.now(UTC).replace(microsecond=0)
    final = _new_archive_path(folder, created_at)
    partial = folder / f".{final.name}.partial"
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.stem}-", dir=folder))
    try:
        with partial.open("wb") as fh:
            writer = fileops.TarWriter(fh)
            if settings.is_sqlite:
                db = await asyncio.to_thread(_backup_sqlite, settings, writer, scratch, progress)
            else:
                db = await _backup_postgres(settings, writer, progress)
            parts = {db.name: db.info}
            redis_stats: redisops.DumpStats | None = None
            if settings.REDIS_URL:
                parts[REDIS_PART], redis_stats = await _backup_redis(settings.REDIS_URL, writer, progress)
            uploads, hashes, files_skipped = await asyncio.to_thread(
                _backup_uploads, settings.UPLOAD_DIR, writer, progress
            )
            parts[UPLOADS_PART] = uploads
            manifest = Manifest(
                created_at=created_at,
                app_version=__version__,
                alembic_revision=db.revision,
                database=DatabaseInfo(kind=database_kind(settings), server_version=db.server_version),
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


# ----------------------------------------------------------------------------------------------------------- verify


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tf.extractfile(member)
    if stream is None:
        raise ArchiveCorrupt("is not a regular file", part=member.name)
    return stream


def _open_members(tf: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for member in tf.getmembers():
        if member.name in members:
            raise ArchiveCorrupt(f"member {member.name} appears twice", part="archive")
        members[member.name] = member
    return members


def _verify_sqlite(stream: fileops.Readable, manifest: Manifest, problems: list[Problem]) -> tuple[str, int]:
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
                counts = _sqlite_counts(conn)
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


def _check_part(problems: list[Problem], name: str, expected: PartInfo, sha256: str, size: int) -> bool:
    if size != expected.size:
        problems.append(Problem(name, f"size mismatch: {size} bytes in the archive, {expected.size} in the manifest"))
        return False
    if sha256 != expected.sha256:
        problems.append(
            Problem(
                name,
                f"sha256 mismatch: the archive holds {sha256[:16]}…, the manifest says {expected.sha256[:16]}…",
            )
        )
        return False
    return True


def _verify_members(path: Path, tf: tarfile.TarFile, result: VerifyResult, progress: ProgressCallback | None) -> None:
    problems = result.problems
    members = _open_members(tf)
    ordered = list(members.values())
    if not fileops.archive_end_ok(path, ordered):
        last = ordered[-1].name if ordered else "the start"
        problems.append(Problem("archive", f"truncated: the archive ends after {last} without its end marker"))
    if MANIFEST_NAME not in members:
        problems.append(Problem(MANIFEST_NAME, "missing: the archive is incomplete or not a timetodo backup"))
        return
    manifest_member = members[MANIFEST_NAME]
    if not manifest_member.isfile() or manifest_member.size > MAX_MANIFEST_BYTES:
        problems.append(Problem(MANIFEST_NAME, "is not a regular file of a plausible size"))
        return
    manifest = parse_manifest(_read_member(tf, manifest_member).read())
    result.manifest = manifest
    add = _reporter(progress, "verify", sum(m.size for m in ordered))

    for name, expected in manifest.parts.items():
        if name == UPLOADS_PART:
            continue
        member = members.get(name)
        if member is None:
            problems.append(Problem(name, "missing from the archive"))
            continue
        if not member.isfile():
            problems.append(Problem(name, "is not a regular file"))
            continue
        stream = _read_member(tf, member)
        if name == PG_PART:
            contents = pg.list_contents(stream, add)
            if _check_part(problems, name, expected, contents.sha256, member.size):
                if contents.error:
                    problems.append(Problem(name, f"pg_restore cannot read it: {contents.error}"))
                else:
                    missing = [
                        t
                        for t, n in manifest.counts.tables.items()
                        if n > 0 and t not in pg.tables_with_data(contents.toc)
                    ]
                    if missing:
                        problems.append(Problem(name, f"holds no data for {', '.join(sorted(missing)[:5])}"))
        elif name == SQLITE_PART:
            sha, size = _verify_sqlite(_counting(stream, add), manifest, problems)
            _check_part(problems, name, expected, sha, size)
        elif name == REDIS_PART:
            lines = [0]

            def count_lines(chunk: bytes, lines: list[int] = lines) -> None:
                lines[0] += chunk.count(b"\n")

            sha, size = fileops.hash_stream(_counting(stream, add, count_lines))
            if _check_part(problems, name, expected, sha, size) and lines[0] != manifest.counts.redis_keys:
                problems.append(Problem(name, f"{lines[0]} keys, the manifest counts {manifest.counts.redis_keys}"))
        else:
            sha, size = fileops.hash_stream(stream, add)
            _check_part(problems, name, expected, sha, size)

    seen: dict[str, str] = {}
    for name, member in members.items():
        if not name.startswith(UPLOADS_PREFIX):
            if name != MANIFEST_NAME and name not in manifest.parts:
                problems.append(Problem("archive", f"unexpected member {name}"))
            continue
        rel = name[len(UPLOADS_PREFIX) :]
        try:
            fileops.safe_relpath(rel)
        except ValueError as exc:
            problems.append(Problem("uploads", str(exc)))
            continue
        if not member.isfile():
            problems.append(Problem(name, "is not a regular file"))
            continue
        sha, _ = fileops.hash_stream(_read_member(tf, member), add)
        seen[rel] = sha
        expected_sha = manifest.files.get(rel)
        if expected_sha is None:
            problems.append(Problem("uploads", f"{rel} is not listed in the manifest"))
        elif expected_sha != sha:
            problems.append(Problem(name, "sha256 mismatch with the manifest"))
    missing_files = sorted(set(manifest.files) - set(seen))
    if missing_files:
        problems.append(
            Problem("uploads", f"{len(missing_files)} file(s) missing from the archive, e.g. {missing_files[0]}")
        )
    uploads = manifest.parts.get(UPLOADS_PART)
    if uploads is not None and (
        uploads.sha256 != fileops.tree_digest(manifest.files) or manifest.counts.files != len(manifest.files)
    ):
        problems.append(Problem(MANIFEST_NAME, "the uploads digest or count does not match its own file list"))


class _counting:
    """A read-only stream wrapper reporting bytes (and chunks) as they are read."""

    def __init__(
        self, stream: IO[bytes], add: Callable[[int], None], on_chunk: Callable[[bytes], None] | None = None
    ) -> None:
        self._stream = stream
        self._add = add
        self._on_chunk = on_chunk

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._add(len(data))
        if self._on_chunk is not None:
            self._on_chunk(data)
        return data


def verify_archive(path: Path, progress: ProgressCallback | None = None) -> VerifyResult:
    """Check an archive without restoring it: a complete tar, a manifest that parses, every part present with the
    manifest's size and sha256, every uploaded file's hash, and that the database part opens (`pg_restore --list`;
    SQLite `PRAGMA integrity_check` and row counts). Problems are collected, not raised."""
    started = time.monotonic()
    if not path.is_file():
        raise BackupConfigError(f"no archive at {path}", hint="list archives with `timetodo backup list`")
    result = VerifyResult(path, path.stat().st_size, None)
    try:
        with tarfile.open(path, "r:") as tf:
            _verify_members(path, tf, result, progress)
    except ArchiveCorrupt as exc:
        result.problems.append(Problem(exc.part or "archive", exc.message))
    except (tarfile.TarError, EOFError) as exc:
        result.problems.insert(0, Problem("archive", f"not a readable tar archive (truncated or corrupt): {exc}"))
    except pg.PgError as exc:
        result.problems.append(Problem(PG_PART, str(exc)))
    result.seconds = time.monotonic() - started
    return result


def read_manifest(path: Path) -> Manifest:
    """The manifest of an archive, without checking the parts."""
    try:
        with tarfile.open(path, "r:") as tf:
            try:
                member = tf.getmember(MANIFEST_NAME)
            except KeyError:
                raise ArchiveCorrupt("missing", part=MANIFEST_NAME) from None
            if member.size > MAX_MANIFEST_BYTES:
                raise ArchiveCorrupt("implausibly large", part=MANIFEST_NAME)
            return parse_manifest(_read_member(tf, member).read())
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveCorrupt(f"not a readable tar archive: {exc}", part="archive") from None


def list_archives(directory: Path) -> list[ArchiveInfo]:
    """Archives in `directory`, newest first, with their manifests (or why it could not be read)."""
    infos = []
    for path in reversed(archives_in(directory)):
        stamp, _ = _archive_key(path)
        created = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        try:
            manifest: Manifest | None = read_manifest(path)
            error = None
        except ArchiveCorrupt as exc:
            manifest, error = None, str(exc)
        infos.append(ArchiveInfo(path, created, path.stat().st_size, manifest, error))
    return infos


# ---------------------------------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class TargetState:
    exists: bool
    tables_with_rows: list[str]
    maintenance_on: bool | None


async def inspect_target(settings: Settings) -> TargetState:
    """Does the configured database hold user data, and is maintenance mode on there?"""
    if settings.is_sqlite:
        return await asyncio.to_thread(_inspect_sqlite, sqlite_path(settings.DATABASE_URL))
    target = pg.PgTarget.from_url(settings.DATABASE_URL)
    try:
        conn = await pg.connect(target)
    except pg.PgUnreachable as exc:
        raise _unreachable(exc, "database") from None
    try:
        rows = await pg.tables_with_rows(conn, NON_USER_TABLES)
        flag = await pg.fetch_optional(conn, "SELECT maintenance_enabled FROM app_state WHERE id = 1", "app_state")
    finally:
        await conn.close()
    return TargetState(True, rows, None if flag is None else bool(flag))


def _inspect_sqlite(path: Path) -> TargetState:
    if not path.exists():
        return TargetState(False, [], None)
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = [
            t
            for t in _sqlite_tables(conn)
            if t not in NON_USER_TABLES
            and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {pg.quote_ident(t)})").fetchone()[0]  # noqa: S608
        ]
        flag = _sqlite_scalar(conn, "SELECT maintenance_enabled FROM app_state WHERE id = 1", "app_state")
    except sqlite3.DatabaseError as exc:
        raise BackupConfigError(f"the target {path} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    return TargetState(True, rows, None if flag is None else bool(flag))


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
    settings: Settings, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> None:
    target = pg.PgTarget.from_url(settings.DATABASE_URL)
    try:
        conn = await pg.connect(target)
        try:
            # tables the archive does not have would survive `pg_restore --clean` and might block its DROPs
            extra = [t for t in await pg.list_tables(conn) if t not in manifest.counts.tables]
            await pg.drop_tables(conn, extra)
        finally:
            await conn.close()
    except pg.PgUnreachable as exc:
        raise _unreachable(exc, "database") from None
    except pg.QueryError as exc:
        raise BackupError(f"could not prepare the target: {exc}", part="database") from None
    part = manifest.parts[PG_PART]
    add = _reporter(progress, "database", part.size)
    stream = _read_member(tf, tf.getmember(PG_PART))
    try:
        await asyncio.to_thread(pg.restore, target, stream, part.sha256, add)
    except pg.PgError as exc:
        raise BackupError(str(exc), part=PG_PART) from None


def _restore_sqlite(
    settings: Settings, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None
) -> None:
    target = sqlite_path(settings.DATABASE_URL)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = manifest.parts[SQLITE_PART]
    add = _reporter(progress, "database", part.size)
    tmp = target.with_name(f".{target.name}.restore-tmp")
    try:
        with tmp.open("wb") as out:
            sha, _ = fileops.copy_stream(_read_member(tf, tf.getmember(SQLITE_PART)), out, add)
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
        return await redisops.restore_keys(
            url, _iter_lines(_read_member(tf, tf.getmember(REDIS_PART))), on_keys=on_keys
        )
    except redisops.RedisUnreachable as exc:
        raise _unreachable(exc, "redis") from None
    except redisops.RedisOpError as exc:
        raise BackupError(str(exc), part=REDIS_PART) from None
    except ValueError as exc:
        raise ArchiveCorrupt(str(exc), part=REDIS_PART) from None


def _restore_uploads(root: Path, tf: tarfile.TarFile, manifest: Manifest, progress: ProgressCallback | None) -> None:
    members = [m for m in tf.getmembers() if m.name.startswith(UPLOADS_PREFIX) and m.isfile()]
    add = _reporter(progress, "uploads", sum(m.size for m in members))
    for member in members:
        rel = fileops.safe_relpath(member.name[len(UPLOADS_PREFIX) :])
        fileops.write_file_atomic(root, rel, _read_member(tf, member), add)


def _count_checks(expected: dict[str, int], actual: dict[str, int]) -> list[Check]:
    checks = []
    for table in sorted(set(expected) | set(actual)):
        exp, act = expected.get(table), actual.get(table)
        checks.append(
            Check(f"rows {table}", "-" if exp is None else str(exp), "missing" if act is None else str(act), exp == act)
        )
    return checks


async def _recount_database(settings: Settings) -> tuple[dict[str, int], bool | None]:
    if settings.is_sqlite:

        def work() -> tuple[dict[str, int], bool | None]:
            conn = sqlite3.connect(sqlite_path(settings.DATABASE_URL), timeout=30)
            try:
                flag = _sqlite_scalar(conn, "SELECT maintenance_enabled FROM app_state WHERE id = 1", "app_state")
                return _sqlite_counts(conn), None if flag is None else bool(flag)
            finally:
                conn.close()

        return await asyncio.to_thread(work)
    target = pg.PgTarget.from_url(settings.DATABASE_URL)
    try:
        conn = await pg.connect(target)
    except pg.PgUnreachable as exc:
        raise _unreachable(exc, "database") from None
    try:
        counts = await pg.count_rows(conn)
        flag = await pg.fetch_optional(conn, "SELECT maintenance_enabled FROM app_state WHERE id = 1", "app_state")
    finally:
        await conn.close()
    return counts, None if flag is None else bool(flag)


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


async def _keep_maintenance_on(settings: Settings, archive_name: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from timetodo.core.database import create_engine, create_sessionmaker
    from timetodo.core.maintenance import set_maintenance

    engine = create_engine(settings, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            await set_maintenance(session, True, f"kept on after restoring {archive_name}"[:500])
    except (SQLAlchemyError, OSError) as exc:
        raise BackupError(
            f"restored, but maintenance mode could not be turned back on: {pg.mask_url(str(exc).splitlines()[0])}",
            part="database",
            hint="run `timetodo maintenance on` now if instances must not write yet",
        ) from None
    finally:
        await engine.dispose()


async def restore_backup(
    settings: Settings,
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
    verified = await asyncio.to_thread(verify_archive, archive, progress)
    if not verified.ok or verified.manifest is None:
        first = verified.problems[0] if verified.problems else Problem("archive", "could not be verified")
        raise ArchiveCorrupt(f"{first.message}; nothing was restored", part=first.part)
    manifest = verified.manifest
    kind = database_kind(settings)
    if manifest.database.kind != kind:
        raise RestoreRefused(
            f"the archive holds a {manifest.database.kind} database but DATABASE_URL is {kind}; nothing was changed",
            part="database",
            hint="restore into the same kind of database the backup was taken from",
        )
    state = await inspect_target(settings)
    _refuse_unless_safe(state, force)
    # reach every target before changing any of them
    restore_redis = REDIS_PART in manifest.parts and manifest.counts.redis_keys is not None
    if restore_redis and settings.REDIS_URL:
        try:
            await redisops.key_count(settings.REDIS_URL)
        except redisops.RedisUnreachable as exc:
            raise _unreachable(exc, "redis") from None
    try:
        settings.UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupConfigError(f"cannot create UPLOAD_DIR {settings.UPLOAD_DIR}: {exc.strerror}") from None

    checks: list[Check] = []
    with tarfile.open(archive, "r:") as tf:
        if kind == "postgresql":
            await _restore_postgres(settings, tf, manifest, progress)
        else:
            await asyncio.to_thread(_restore_sqlite, settings, tf, manifest, progress)
        if state.maintenance_on:
            # the restored app_state carries the backup's flag; an operator who stopped writes for the restore
            # keeps them stopped until they say otherwise (and the re-count below is not raced by writers)
            await _keep_maintenance_on(settings, archive.name)
        if restore_redis:
            expected_keys = str(manifest.counts.redis_keys)
            if settings.REDIS_URL:
                keys = await _restore_redis(settings.REDIS_URL, tf, manifest, progress)
                try:
                    present = await redisops.count_present(settings.REDIS_URL, keys)
                except redisops.RedisUnreachable as exc:
                    raise _unreachable(exc, "redis") from None
                checks.append(Check("redis keys", expected_keys, str(present), present == manifest.counts.redis_keys))
            else:
                checks.append(Check("redis keys", expected_keys, "not restored: REDIS_URL is not set", False))
        await asyncio.to_thread(_restore_uploads, settings.UPLOAD_DIR, tf, manifest, progress)

    counts, maintenance = await _recount_database(settings)
    checks = _count_checks(manifest.counts.tables, counts) + checks
    file_checks, extra = await asyncio.to_thread(_file_checks, settings.UPLOAD_DIR, manifest.files)
    checks.extend(file_checks)
    return RestoreResult(archive, manifest, checks, maintenance, extra, await head, time.monotonic() - started)
