"""Files and archives: hash and list an upload directory, stream members into an uncompressed tar, write back safely.

Reused by backup/restore and by the migration toolkit. Nothing here knows about the database or Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from timetodo.core.fs import private_tree
from timetodo.files.storage import INCOMING

CHUNK = 1024 * 1024
ByteCallback = Callable[[int], None]
"""Told how many more bytes were copied."""


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class FileEntry:
    """A regular file under a root: its POSIX path relative to the root, and where it is."""

    relpath: str
    path: Path


def iter_files(root: Path, exclude: Iterable[str] = (INCOMING,)) -> Iterator[FileEntry]:
    """Regular files under `root` (symlinks are not followed), in a stable order, without the excluded top-level
    folders (uploads in progress live in `.incoming/`)."""
    if not root.is_dir():
        return
    skip = set(exclude)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            yield FileEntry(path.relative_to(root).as_posix(), path)


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def scan_tree(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under `root` (re-reads every byte)."""
    return {entry.relpath: hash_file(entry.path)[0] for entry in iter_files(root)}


def tree_digest(files: dict[str, str]) -> str:
    """One sha256 standing for a whole set of files: over the sorted `path NUL sha256 LF` lines."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + files[rel].encode() + b"\n")
    return digest.hexdigest()


def safe_relpath(rel: str) -> str:
    """Validate a relative path taken from an archive: no absolute paths, no `..`, no `.incoming/`."""
    if not rel or "\\" in rel or "\0" in rel:
        raise ValueError(f"unsafe path in archive: {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or pure.parts[0] == INCOMING:
        raise ValueError(f"unsafe path in archive: {rel!r}")
    return pure.as_posix()


class HashingWriter:
    """Writes through to a file object while counting bytes and computing sha256."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True)
class Member:
    name: str
    sha256: str
    size: int


class TarWriter:
    """An uncompressed tar written member by member into a seekable file, without knowing sizes in advance.

    Each member's header is written as a placeholder, the data streams after it (hashed on the way), and the real
    header (with the final size) is written over the placeholder. GNU format keeps the header length independent
    of the size, so the overwrite is exact.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.members: list[Member] = []

    @staticmethod
    def _header(name: str, size: int, mtime: float, mode: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(mtime)
        info.mode = mode
        info.type = tarfile.REGTYPE
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    @contextlib.contextmanager
    def member(self, name: str, mtime: float | None = None, mode: int = 0o644) -> Iterator[HashingWriter]:
        stamp = time.time() if mtime is None else mtime
        placeholder = self._header(name, 0, stamp, mode)
        start = self._fh.tell()
        self._fh.write(b"\0" * len(placeholder))
        writer = HashingWriter(self._fh)
        yield writer
        self._fh.write(b"\0" * (-writer.size % BLOCK))
        end = self._fh.tell()
        header = self._header(name, writer.size, stamp, mode)
        if len(header) != len(placeholder):  # pragma: no cover - GNU headers do not grow with the size
            raise RuntimeError(f"tar header for {name} changed length")
        self._fh.seek(start)
        self._fh.write(header)
        self._fh.seek(end)
        self.members.append(Member(name, writer.sha256, writer.size))

    def add_bytes(self, name: str, data: bytes) -> Member:
        with self.member(name) as out:
            out.write(data)
        return self.members[-1]

    def add_file(self, name: str, path: Path, on_bytes: ByteCallback | None = None) -> Member:
        """Copy a file in (its size may change while it is read: the header records what was copied)."""
        with path.open("rb") as src, self.member(name, mtime=os.fstat(src.fileno()).st_mtime) as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return self.members[-1]

    def close(self) -> None:
        self._fh.write(END_OF_ARCHIVE)


def archive_end_ok(path: Path, members: list[tarfile.TarInfo]) -> bool:
    """True when the file continues past the last member's data with the two zero blocks that end a tar.

    `tarfile` silently treats a file cut at a header boundary as a shorter archive; this catches it.
    """
    end = 0
    if members:
        last = members[-1]
        end = last.offset_data + last.size + (-last.size % BLOCK)
    with path.open("rb") as fh:
        fh.seek(end)
        return fh.read(len(END_OF_ARCHIVE)) == END_OF_ARCHIVE


def copy_stream(src: Readable, dst: BinaryIO, on_bytes: ByteCallback | None = None) -> tuple[str, int]:
    """Copy to the end of `src`; returns sha256 and size of what was copied."""
    out = HashingWriter(dst)
    while chunk := src.read(CHUNK):
        out.write(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return out.sha256, out.size


def hash_stream(src: Readable, on_bytes: ByteCallback | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file_atomic(root: Path, rel: str, src: Readable, on_bytes: ByteCallback | None = None) -> tuple[str, int]:
    """Write `root/rel` from a stream through a temp file in the same folder and a rename; returns sha256, size."""
    target = root / safe_relpath(rel)
    private_tree(root, target.parent.relative_to(root))
    fd, tmp_name = tempfile.mkstemp(prefix=".restore-", dir=target.parent)  # 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            result = copy_stream(src, out, on_bytes)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result
