"""Upload folders between hosts: rsync when the remote has it, otherwise tar over the same SSH connection options.

A host may lack rsync — a Render service still running an image built before rsync was added, a minimal VPS — and a
migration must not stop there. `copy_tree` asks the remote once (`command -v rsync`, cached per host) and takes the
tar path without it. The tar path keeps rsync's guarantees that the migration relies on:

- incremental: both sides are listed (size and whole-second mtime, rsync's quick check) and only new or changed
  files travel; a second run with nothing changed sends nothing;
- exact: with `delete`, files absent from the source are removed from the destination; in-progress uploads
  (`.incoming/`) are left out on both sides; mtimes are kept (tar restores them), so the next quick check agrees;
- safe with any name: file lists travel NUL-separated on stdin with `--verbatim-files-from` (a name starting with
  `-`, holding a newline or shell characters is a name), and the remote directory is one shell-quoted word;
- `live` as with rsync: a file deleted between the listing and the copy is counted in `vanished`, not an error;
  without `live` it is an error.

The result has rsync's shape: files, bytes, seconds, vanished (+ `method`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from timetodo.files.storage import INCOMING
from timetodo.ops.adapters.rsync import Place, RsyncError, make_dirs, rsync
from timetodo.ops.adapters.transport import SSHTarget, openssh_options

_HAS_RSYNC: dict[tuple[str, int, str], bool] = {}
_CANNOT_STAT = re.compile(rb"Cannot stat: No such file or directory")
_TAR = ["tar", "--null", "--verbatim-files-from", "-T", "-"]

Listing = dict[str, tuple[int, int]]
"""{relative path: (size, mtime in whole seconds)}"""


def _ssh(target: SSHTarget, remote_command: str) -> list[str]:
    return ["ssh", *openssh_options(target), f"{target.user}@{target.host}", remote_command]


async def remote_has_rsync(target: SSHTarget) -> bool:
    key = (target.host, target.port, target.user)
    if key not in _HAS_RSYNC:
        proc = await asyncio.create_subprocess_exec(
            *_ssh(target, "command -v rsync"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode == 255:  # ssh itself failed: say so rather than guess
            raise RsyncError(f"ssh {target.user}@{target.host}: {err.decode('utf-8', 'replace').strip()[-300:]}")
        _HAS_RSYNC[key] = proc.returncode == 0 and bool(out.strip())
    return _HAS_RSYNC[key]


async def copy_tree(src: Place, dst: Place, *, delete: bool = True, live: bool = False) -> dict[str, Any]:
    """Make `dst` hold what `src` holds (at most one side remote): rsync, or tar over SSH when the remote side has
    no rsync. See the module docstring for what both paths guarantee."""
    remote = src.ssh or dst.ssh
    if remote is None or await remote_has_rsync(remote):
        return {**await rsync(src, dst, delete=delete, live=live), "method": "rsync"}
    return await tar_copy(src, dst, delete=delete, live=live)


def _unlink_all(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).unlink(missing_ok=True)


def _local_listing(root: Path) -> Listing:
    return {
        rel: (size, mtime_ns // 1_000_000_000) for rel, (size, mtime_ns, _inode) in _local_full_listing(root).items()
    }


async def _run(args: list[str], stdin: bytes, what: str) -> tuple[bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise RsyncError(f"{what} failed (exit {proc.returncode}): {err.decode('utf-8', 'replace').strip()[-400:]}")
    return out, err


async def _remote_listing(target: SSHTarget, directory: str) -> Listing:
    command = (
        f"cd {shlex.quote(directory)} 2>/dev/null || exit 0; "
        f"find . -type f ! -path './{INCOMING}/*' -printf '%s %T@ %P\\0'"
    )
    out, _ = await _run(_ssh(target, command), b"", f"listing {directory} on {target.host}")
    listing: Listing = {}
    for entry in out.split(b"\0"):
        size, _, rest = entry.partition(b" ")
        mtime, _, rel = rest.partition(b" ")
        if rel:
            listing[os.fsdecode(rel)] = (int(size), int(float(mtime)))
    return listing


async def _pipe(producer: list[str], consumer: list[str], names: bytes, what: str) -> bytes:
    """`producer | consumer`, `names` on the producer's stdin; the producer's stderr returned."""
    read_end, write_end = os.pipe()
    try:
        maker = await asyncio.create_subprocess_exec(
            *producer, stdin=asyncio.subprocess.PIPE, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
        taker = await asyncio.create_subprocess_exec(
            *consumer, stdin=read_end, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    (_, made_err), (_, taken_err) = await asyncio.gather(maker.communicate(names), taker.communicate())
    if maker.returncode != 0 or taker.returncode != 0:
        detail = (made_err + taken_err).decode("utf-8", "replace").strip()[-400:]
        raise RsyncError(f"{what} failed (exit {maker.returncode}/{taker.returncode}): {detail}")
    return made_err


async def tar_copy(src: Place, dst: Place, *, delete: bool = True, live: bool = False) -> dict[str, Any]:
    """The tar path of `copy_tree` (exactly one side remote)."""
    if (src.ssh is None) == (dst.ssh is None):
        raise RsyncError("tar copy needs exactly one remote side")
    started = time.monotonic()
    await asyncio.to_thread(make_dirs, src.path if src.ssh is None else dst.path)
    source = (
        await _remote_listing(src.ssh, src.path) if src.ssh else await asyncio.to_thread(_local_listing, Path(src.path))
    )
    destination = (
        await _remote_listing(dst.ssh, dst.path) if dst.ssh else await asyncio.to_thread(_local_listing, Path(dst.path))
    )
    changed = sorted(name for name, seen in source.items() if destination.get(name) != seen)
    names = b"".join(os.fsencode(name) + b"\0" for name in changed)
    create = [*_TAR, "-cf", "-", *(["--ignore-failed-read"] if live else [])]
    vanished = 0
    if changed and src.ssh:
        remote = f"cd {shlex.quote(src.path)} && {shlex.join(create)}"
        errors = await _pipe(_ssh(src.ssh, remote), ["tar", "-xf", "-", "-C", dst.path], names, "tar pull")
        vanished = len(_CANNOT_STAT.findall(errors))
    elif changed and dst.ssh:
        remote = f"mkdir -p {shlex.quote(dst.path)} && cd {shlex.quote(dst.path)} && tar -xf -"
        errors = await _pipe([*create[:1], "-C", src.path, *create[1:]], _ssh(dst.ssh, remote), names, "tar push")
        vanished = len(_CANNOT_STAT.findall(errors))
    gone = sorted(set(destination) - set(source)) if delete else []
    if gone and dst.ssh:
        remote = f"cd {shlex.quote(dst.path)} && xargs -0 -r rm -f --"
        await _run(_ssh(dst.ssh, remote), b"".join(os.fsencode(n) + b"\0" for n in gone), "remote delete")
    elif gone:
        await asyncio.to_thread(_unlink_all, Path(dst.path), gone)
    return {
        "files": len(changed) - vanished,
        "bytes": sum(source[name][0] for name in changed),
        "seconds": round(time.monotonic() - started, 3),
        "vanished": vanished,
        "deleted": len(gone),
        "method": "tar",
    }


# ------------------------------------------------------------------ listings with inode and ns mtime, one-hop copies

Stat = tuple[int, int, int]
"""(size, mtime in ns, inode)"""
FullListing = dict[str, Stat]


def _local_full_listing(root: Path) -> FullListing:
    listing: FullListing = {}
    for directory, dirs, files in os.walk(root):
        if Path(directory) == root and INCOMING in dirs:
            dirs.remove(INCOMING)
        for name in files:
            path = Path(directory) / name
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_file() and not path.is_symlink():
                listing[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return listing


def _ns(text: bytes) -> int:
    """find's `%T@` (seconds, a dot, up to 10 digits of fraction) as integer nanoseconds, without float rounding."""
    whole, _, fraction = text.partition(b".")
    return int(whole) * 1_000_000_000 + int((fraction + b"000000000")[:9] or b"0")


async def list_place(place: Place) -> FullListing:
    """{relative path: (size, mtime ns, inode)} of every regular file under the place (in-progress uploads left out;
    an absent directory is empty): one `find` over one SSH connection for a remote place."""
    if place.ssh is None:
        return await asyncio.to_thread(_local_full_listing, Path(place.path))
    command = (
        f"cd {shlex.quote(place.path)} 2>/dev/null || exit 0; "
        f"find . -type f ! -path './{INCOMING}/*' -printf '%s %T@ %i %P\\0'"
    )
    out, _ = await _run(_ssh(place.ssh, command), b"", f"listing {place.path} on {place.ssh.host}")
    listing: FullListing = {}
    for entry in out.split(b"\0"):
        size, _, rest = entry.partition(b" ")
        mtime, _, rest = rest.partition(b" ")
        inode, _, rel = rest.partition(b" ")
        if rel:
            listing[os.fsdecode(rel)] = (int(size), _ns(mtime), int(inode))
    return listing


def _tar_side(place: Place, command: str) -> list[str]:
    """`command` (shell text, run in the place's directory) on the place's host."""
    text = f"mkdir -p {shlex.quote(place.path)} && cd {shlex.quote(place.path)} && {command}"
    return _ssh(place.ssh, text) if place.ssh else ["sh", "-c", text]


async def copy_listed(src: Place, dst: Place, names: list[str], *, live: bool = False) -> dict[str, Any]:
    """Exactly the files `names` (relative paths) from `src` to `dst` in one hop — `tar c` on the source's host piped
    into `tar x` on the destination's, through this machine's memory, never its disk — mtimes kept. `live`: a file
    gone meanwhile is counted in `vanished`; otherwise it is an error."""
    started = time.monotonic()
    if not names:
        return {"files": 0, "bytes": 0, "vanished": 0, "seconds": 0.0, "method": "tar, one hop"}
    create = shlex.join([*_TAR, "-cf", "-", *(["--ignore-failed-read"] if live else [])])
    listed = b"".join(os.fsencode(name) + b"\0" for name in names)
    errors = await _pipe(_tar_side(src, create), _tar_side(dst, "tar -xf -"), listed, "tar copy")
    vanished = len(_CANNOT_STAT.findall(errors))
    return {
        "files": len(names) - vanished,
        "vanished": vanished,
        "seconds": round(time.monotonic() - started, 3),
        "method": "tar, one hop",
    }


async def delete_listed(place: Place, names: list[str]) -> None:
    """Remove the files `names` (relative paths) under the place; absent ones are fine."""
    if not names:
        return
    if place.ssh is None:
        await asyncio.to_thread(_unlink_all, Path(place.path), names)
        return
    remote = f"cd {shlex.quote(place.path)} && xargs -0 -r rm -f --"
    await _run(_ssh(place.ssh, remote), b"".join(os.fsencode(n) + b"\0" for n in names), "remote delete")
