"""`verify_archive`: check an archive without restoring it. Problems are collected, not raised."""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

from timetodo.ops.adapters import files as fileops
from timetodo.ops.adapters import postgres as pg
from timetodo.ops.backup.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PG_PART,
    REDIS_PART,
    SQLITE_PART,
    UPLOADS_PART,
    UPLOADS_PREFIX,
    ArchiveCorrupt,
    BackupConfigError,
    Manifest,
    PartInfo,
    Problem,
    ProgressCallback,
    VerifyResult,
    parse_manifest,
    read_member,
    reporter,
)
from timetodo.ops.backup.sqlite import verify_sqlite


def _open_members(tf: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for member in tf.getmembers():
        if member.name in members:
            raise ArchiveCorrupt(f"member {member.name} appears twice", part="archive")
        members[member.name] = member
    return members


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


class _Reading(NamedTuple):
    """An archive being verified: its members, its manifest, the problems found so far, the progress counter."""

    tf: tarfile.TarFile
    members: dict[str, tarfile.TarInfo]
    manifest: Manifest
    problems: list[Problem]
    add: Callable[[int], None]


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
    manifest = parse_manifest(read_member(tf, manifest_member).read())
    result.manifest = manifest
    add = reporter(progress, "verify", sum(m.size for m in ordered))

    reading = _Reading(tf, members, manifest, problems, add)
    _verify_parts(reading)
    _verify_uploads(reading)


def _verify_parts(reading: _Reading) -> None:
    """Every part the manifest lists: present, its size and sha256, and readable as what it claims to be."""
    tf, members, manifest, problems, add = reading
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
        stream = read_member(tf, member)
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
            sha, size = verify_sqlite(_counting(stream, add), manifest, problems)
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


def _verify_uploads(reading: _Reading) -> None:
    """Every uploaded file: a safe path, listed in the manifest with the same sha256; none missing; no stray member."""
    tf, members, manifest, problems, add = reading
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
        sha, _ = fileops.hash_stream(read_member(tf, member), add)
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
