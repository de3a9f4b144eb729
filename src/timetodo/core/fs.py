"""Files the app and its tools write are readable by the app's user only: folders 0700, files 0600.

Uploaded blobs, the SQLite database, backup archives and restored files all follow this, so nothing a user stored
is world-readable on a shared host.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) readable by the app's user only; tighten it if it exists looser."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # not ours to change (a mounted volume): files stay 0600
            path.chmod(PRIVATE_DIR)
    return path


def private_tree(root: Path, folder: Path) -> Path:
    """`private_dir` for `root` and every folder from it down to `root / folder` (mkdir's `parents` would leave
    the intermediate ones 0755)."""
    private_dir(root)
    for part in reversed(folder.parents):
        private_dir(root / part)
    return private_dir(root / folder)


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, 0600 from its first byte (a temporary file renamed over it)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE), "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
