"""How the app's image reaches the target for the compose runtime, without a registry by default.

Three sources (`[target] image_source`):

- `build` (default): the build context (the repository's Dockerfile, pyproject.toml, uv.lock, README.md and
  src/, i.e. what the Dockerfile copies: the sdist of the project with its lock file) is packed here into one
  deterministic tar.gz, uploaded to `APP/build/`, unpacked and built on the target with `docker build`. The tag
  is `<project>:ctx-<first 12 hex of the context's sha256>`: the same sources give the same tag, and a tag already
  on the target is not built again. Dependencies are pinned by uv.lock (`uv sync --frozen` in the Dockerfile).
- `load`: an image the operator built (`target.image`) is streamed from this machine's `docker save` into the
  target's `docker load` over the SSH connection (no temp file on either side).
- `pull`: `docker pull target.image` on the target (e.g. ghcr.io/OWNER/timetodo:vX.Y.Z).

Whatever the source, the target's env file gets `TIMETODO_IMAGE=<tag>` (the compose file's image), the image's id
(`docker image inspect`) is recorded in the deploy result (the state file and the final report), and
`APP/.image.json` on the target keeps the current and the previous deployment's tag and id, so rolling the app back
to the previous image is one command (`timetodo migrate app-rollback`), the data untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ImageSource = Literal["build", "load", "pull"]

CONTEXT_FILES = ("Dockerfile", "pyproject.toml", "uv.lock", "README.md")
CONTEXT_DIRS = ("src",)
_SKIP = re.compile(r"(^|/)(__pycache__|\.mypy_cache|\.pytest_cache)(/|$)|\.py[co]$")
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")


@dataclass(frozen=True)
class BuildContext:
    data: bytes
    sha256: str
    files: int

    def tag(self, project: str) -> str:
        return f"{project}:ctx-{self.sha256[:12]}"


@dataclass
class DeployedImage:
    """What runs on the target: where it came from, its tag and id, and the deployment's before it."""

    source: str
    """build, load, pull, or rollback (app-rollback put the previous image back)"""
    tag: str
    id: str = ""
    built: bool = False
    previous_tag: str = ""
    previous_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_context(root: Path) -> BuildContext:
    """The files the Dockerfile copies, as a gzipped tar with fixed owners, modes and times (the same sources give
    the same bytes). Raises FileNotFoundError naming what is missing."""
    paths: list[Path] = []
    for name in CONTEXT_FILES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} (the build context needs {', '.join(CONTEXT_FILES)} and src/)")
        paths.append(path)
    for name in CONTEXT_DIRS:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} (the build context needs {', '.join(CONTEXT_FILES)} and src/)")
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and not path.is_symlink() and not _SKIP.search(relative):
                paths.append(path)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            content = path.read_bytes()
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    return BuildContext(data, hashlib.sha256(data).hexdigest(), len(paths))


def with_image(env_text: str, tag: str) -> str:
    """The env file with TIMETODO_IMAGE set to `tag` (an earlier TIMETODO_IMAGE line is dropped)."""
    kept = [line for line in env_text.splitlines() if not re.match(r"^\s*(export\s+)?TIMETODO_IMAGE\s*=", line)]
    return "\n".join([*kept, f"TIMETODO_IMAGE={tag}"]) + "\n"


def parse_record(text: str) -> dict[str, str]:
    """APP/.image.json as a dict of strings (empty when unreadable)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {k: str(v) for k, v in data.items() if isinstance(v, str | int)} if isinstance(data, dict) else {}


async def chunks(stream: Any, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """An asyncio StreamReader's bytes in chunks, until EOF."""
    while True:
        chunk = await stream.read(size)
        if not chunk:
            return
        yield chunk
