"""Content-addressed file storage under UPLOAD_DIR: `<sha256[:2]>/<sha256[2:4]>/<sha256>`.

Uploads stream into `.incoming/` while being hashed and counted, then are renamed into place (atomic on one
filesystem). Nothing half-written ever appears under its hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filetype

INCOMING = ".incoming"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def blob_path(root: Path, sha256: str) -> Path:
    if not _HEX64.match(sha256):
        raise ValueError("not a sha256 hex digest")
    return root / sha256[:2] / sha256[2:4] / sha256


def sanitize_filename(name: str, max_length: int = 255) -> str:
    """A safe display name: no directories, no control or bidi characters, no leading dots, bounded length."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
    name = re.sub(r"\s+", " ", name).strip().lstrip(".").strip()
    if name in ("", ".", ".."):
        name = "file"
    if len(name.encode()) > max_length:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot and len(ext) <= 16 else ""
        budget = max_length - len(ext.encode()) - (1 if ext else 0)
        stem = (stem if dot else name).encode()[:budget].decode(errors="ignore")
        name = f"{stem}.{ext}" if ext else stem
    return name


def sniff_content_type(head: bytes) -> str:
    """MIME type from the content itself (never from the client's claim)."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    if not head:
        return "application/octet-stream"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text/plain"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 4:  # cut in the middle of a character at the end of the sample
                return "text/plain"
    return "application/octet-stream"


@dataclass
class IncomingFile:
    path: Path
    size: int = 0
    head: bytes = b""
    hasher: hashlib._Hash | None = None

    @property
    def sha256(self) -> str:
        assert self.hasher is not None
        return self.hasher.hexdigest()


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) readable by the app's user only; tighten it if it exists looser."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # not ours to change (a mounted volume): files stay 0600
            path.chmod(PRIVATE_DIR)
    return path


class IncomingWriter:
    """Write an upload chunk by chunk; raises OverflowError past `limit` bytes. Files are 0600, folders 0700."""

    def __init__(self, root: Path, limit: int) -> None:
        private_dir(root)
        incoming = private_dir(root / INCOMING)
        self.file = IncomingFile(incoming / uuid.uuid4().hex, hasher=hashlib.sha256())
        self.limit = limit
        fd = os.open(self.file.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        self._fh = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.size += len(data)
        if self.file.size > self.limit:
            raise OverflowError(self.file.size)
        if len(self.file.head) < 4096:
            self.file.head += data[: 4096 - len(self.file.head)]
        assert self.file.hasher is not None
        self.file.hasher.update(data)
        self._fh.write(data)

    def finish(self) -> IncomingFile:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self.file

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.file.path.unlink()


def commit_blob(root: Path, incoming: IncomingFile) -> Path:
    """Move an incoming file to its content address (keeping the existing copy when the content is already there)."""
    final = blob_path(root, incoming.sha256)
    for folder in reversed(final.relative_to(root).parents):
        private_dir(root / folder)
    if final.exists():
        incoming.path.unlink(missing_ok=True)
    else:
        os.replace(incoming.path, final)
    return final


def remove_blob(root: Path, sha256: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        blob_path(root, sha256).unlink()


def iter_blobs(root: Path) -> Iterator[tuple[str, Path]]:
    if not root.exists():
        return
    for first in sorted(root.iterdir()):
        if first.name == INCOMING or not first.is_dir() or len(first.name) != 2:
            continue
        for second in sorted(first.iterdir()):
            if not second.is_dir():
                continue
            for blob in sorted(second.iterdir()):
                if _HEX64.match(blob.name):
                    yield blob.name, blob


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
