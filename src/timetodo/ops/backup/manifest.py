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

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from timetodo.ops.adapters import postgres as pg
from timetodo.ops.adapters import redis as redisops
from timetodo.ops.errors import EXIT_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_WARNING, OpsError
from timetodo.ops.sources import DataSources

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


class BackupError(OpsError):
    """A backup operation failed. `part` names the archive part or service concerned; messages hold no secrets."""

    exit_code = EXIT_WARNING

    def __init__(self, message: str, *, part: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.part = part

    def __str__(self) -> str:
        return f"{self.part}: {self.message}" if self.part else self.message


class ArchiveCorrupt(BackupError):
    """The archive is unreadable, incomplete or does not match its manifest."""


class RestoreRefused(BackupError):
    """The restore would overwrite data or race a writing service; nothing was changed."""

    exit_code = EXIT_REFUSED


class Unreachable(BackupError):
    """PostgreSQL or Redis could not be reached."""

    exit_code = EXIT_UNREACHABLE


class BackupConfigError(BackupError):
    """The settings or arguments cannot work (no such archive, in-memory database, …)."""

    exit_code = EXIT_ERROR


# -------------------------------------------------------------------------------------------------------- progress


Unit = Literal["bytes", "keys", "files"]


@dataclass(frozen=True)
class ProgressUpdate:
    part: str
    done: int
    total: int | None
    unit: Unit = "bytes"


ProgressCallback = Callable[[ProgressUpdate], None]


def reporter(
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


def database_kind(sources: DataSources) -> DatabaseKind:
    return "sqlite" if sources.is_sqlite else "postgresql"


def sqlite_path(database_url: str) -> Path:
    rest = database_url.split(":///", 1)[1] if ":///" in database_url else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        raise BackupConfigError("DATABASE_URL is an in-memory SQLite database: there is no file to back up or restore")
    return Path(rest)


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


def new_archive_path(directory: Path, when: datetime) -> Path:
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


def unreachable(exc: pg.PgUnreachable | redisops.RedisUnreachable, part: str) -> Unreachable:
    hint = "check DATABASE_URL and that PostgreSQL is running" if part == "database" else "check REDIS_URL"
    return Unreachable(str(exc), part=part, hint=hint)


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
            return parse_manifest(read_member(tf, member).read())
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


def read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = tf.extractfile(member)
    if stream is None:
        raise ArchiveCorrupt("is not a regular file", part=member.name)
    return stream


@dataclass
class DatabasePart:
    name: str
    info: PartInfo
    tables: dict[str, int]
    revision: str | None
    server_version: str
