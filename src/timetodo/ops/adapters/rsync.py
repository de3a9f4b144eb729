"""Uploads between hosts with rsync (incremental, partial files kept, in-progress uploads left out), and the
listings (sha256 or size per file) of a remote upload directory."""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timetodo.core.logging import mask_secrets
from timetodo.files.storage import INCOMING
from timetodo.ops.adapters.transport import SSHTarget, Transport, openssh_options
from timetodo.ops.errors import OpsError

log = logging.getLogger("timetodo.ops.copy")


class RsyncError(OpsError):
    """rsync failed or was asked for something it cannot do; the message holds no secret."""


def make_dirs(*paths: str) -> None:
    for path in paths:
        Path(path).mkdir(parents=True, exist_ok=True)


def ssh_command(target: SSHTarget) -> str:
    """The `ssh` command rsync uses: the same key and known_hosts as the transport, no prompts."""
    return shlex.join(["ssh", *openssh_options(target)])


@dataclass(frozen=True)
class Place:
    """A directory on this machine (`ssh` None) or on an SSH host."""

    path: str
    ssh: SSHTarget | None = None

    def rsync_path(self) -> str:
        path = self.path.rstrip("/") + "/"
        return f"{self.ssh.user}@{self.ssh.host}:{path}" if self.ssh else path


_STATS = re.compile(r"Number of regular files transferred: ([\d,]+).*?Total transferred file size: ([\d,]+)", re.S)


RSYNC_VANISHED = 24
"""rsync's exit status "some files vanished before they could be transferred"."""
_VANISHED_LINE = re.compile(r"^file has vanished: ", re.M)


async def rsync(src: Place, dst: Place, *, delete: bool = True, live: bool = False) -> dict[str, Any]:
    """rsync -a from `src` to `dst` (at most one side remote), leaving out in-progress uploads.

    `live`: the source is still in use (no write freeze), so a file deleted between rsync's listing and its
    transfer is normal: exit 24 ("some files vanished") is then a success and the vanished files are counted in
    `vanished`. Without `live` (inside the freeze, or any copy that must be exact) exit 24 is an error like any
    other non-zero exit."""
    if src.ssh and dst.ssh:
        raise RsyncError("rsync between two remote hosts: relay through a local directory")
    remote = src.ssh or dst.ssh
    args = ["rsync", "-a", "--stats", "--partial", f"--exclude=/{INCOMING}/"]
    if delete:
        args.append("--delete")
    if remote:
        # --secluded-args: the remote path travels inside rsync's protocol, not on the remote shell's command line, so
        # no character of it (spaces, quotes, `;`, `$()`, newlines) is read by that shell
        args += ["--secluded-args", "-e", ssh_command(remote)]
    await asyncio.to_thread(make_dirs, *(p.path for p in (src, dst) if not p.ssh))
    if dst.ssh:
        args += ["--rsync-path", f"mkdir -p {shlex.quote(dst.path)} && rsync"]
    args += [src.rsync_path(), dst.rsync_path()]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    seconds = time.monotonic() - started
    log.info(
        "rsync finished",
        extra={
            "from": src.rsync_path(),
            "to": dst.rsync_path(),
            "exit_status": proc.returncode,
            "seconds": round(seconds, 3),
        },
    )
    errors = err.decode("utf-8", "replace")
    vanished = len(_VANISHED_LINE.findall(errors))
    if proc.returncode == RSYNC_VANISHED and live:
        log.warning("rsync: files vanished during a live copy", extra={"vanished": vanished})
    elif proc.returncode != 0:
        raise RsyncError(
            f"rsync {src.rsync_path()} → {dst.rsync_path()} failed (exit {proc.returncode}): "
            f"{mask_secrets(errors.strip()[-400:])}",
            "check the SSH access and that rsync is installed on both sides",
        )
    match = _STATS.search(out.decode("utf-8", "replace"))
    files = int(match.group(1).replace(",", "")) if match else 0
    size = int(match.group(2).replace(",", "")) if match else 0
    return {"files": files, "bytes": size, "seconds": round(seconds, 3), "vanished": vanished}


MANIFEST_COMMAND = (
    "cd {dir} 2>/dev/null || exit 0; find . -type f ! -path './{incoming}/*' -print0 | sort -z | xargs -0 -r sha256sum"
)


async def remote_manifest(transport: Transport, directory: str) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` on the transport's host (in-progress uploads left
    out); an absent directory is empty."""
    result = await transport.run(MANIFEST_COMMAND.format(dir=shlex.quote(directory), incoming=INCOMING), timeout=3600)
    manifest: dict[str, str] = {}
    for line in result.stdout.splitlines():
        digest, _, rel = line.partition("  ")
        if digest and rel:
            manifest[rel.removeprefix("./")] = digest
    return manifest


def usage_command(directory: str) -> str:
    """Shell text printing the total bytes, then the number of files, under `directory` ("0 0" when absent). The
    path is quoted and entered with `cd`, so no path (spaces, quotes, `;`, `$()`, a leading `-`) is read as shell
    or as an option."""
    return f"cd {shlex.quote(directory)} 2>/dev/null || exit 0; du -sb . 2>/dev/null | cut -f1; find . -type f | wc -l"


async def remote_sizes(transport: Transport, directory: str) -> dict[str, int]:
    """{relative path: size} of every file under `directory` on the transport's host (no hashing: cheap)."""
    command = (
        f"cd {shlex.quote(directory)} 2>/dev/null || exit 0; find . -type f ! -path './{INCOMING}/*' -printf '%s %P\\n'"
    )
    result = await transport.run(command, timeout=600)
    sizes: dict[str, int] = {}
    for line in result.stdout.splitlines():
        size, _, rel = line.partition(" ")
        if size.isdigit() and rel:
            sizes[rel] = int(size)
    return sizes
