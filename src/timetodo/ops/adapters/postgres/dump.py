"""pg_dump / pg_restore: a custom-format dump streamed into a backup archive (and back, checked against its hash),
and the parallel directory-format dump/restore the migration copies with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from timetodo.ops.adapters.postgres.target import CHUNK, PgError, PgTarget, connect, tool
from timetodo.ops.sources import with_database

log = logging.getLogger("timetodo.ops.copy")


def error_tail(text: str, target: PgTarget, limit: int = 3) -> str:
    """The last error lines a pg tool printed (all its last lines when none says error/fatal), password removed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    return target.scrub(" | ".join(errors[-limit:]))[:600]


def _last_lines(path: Path, target: PgTarget) -> str:
    return error_tail(path.read_text("utf-8", "replace"), target)


def dump(
    target: PgTarget,
    write: Callable[[bytes], Any],
    snapshot: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """`pg_dump -Fc` of the database, streamed to `write` (no intermediate file). `pg_restore` reads such a dump
    from a file or a pipe, also in parallel (`-j`)."""
    args = [tool("pg_dump"), "--format=custom"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    args.append(f"--dbname={target.url}")
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        errlog = Path(tmp) / "stderr"
        with errlog.open("wb") as err:
            proc = subprocess.Popen(
                args, env=target.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(CHUNK):
                    write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                rc = proc.wait()
        if rc != 0:
            raise PgError(f"pg_dump failed (exit {rc}): {_last_lines(errlog, target)}")


def _feed(
    proc: subprocess.Popen[bytes],
    src: IO[bytes],
    on_bytes: Callable[[int], None] | None,
    expected_sha256: str | None,
) -> tuple[str, bool]:
    """Copy `src` into the process' stdin, hashing it. The last chunk is held back until the whole digest is known:
    on a mismatch it is never sent, so a restore cannot reach its COMMIT. Returns (sha256, fully_sent)."""
    assert proc.stdin is not None
    digest = hashlib.sha256()
    sent_all = True
    pending = src.read(CHUNK)
    while pending:
        digest.update(pending)
        following = src.read(CHUNK)
        if not following and expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            # keep stdin open: the caller kills the process before it could see an end of input
            return digest.hexdigest(), False
        try:
            proc.stdin.write(pending)
        except BrokenPipeError:
            # the tool stopped reading (pg_restore --list needs only the table of contents): finish the digest
            sent_all = False
            chunk = following
            while chunk:
                digest.update(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                chunk = src.read(CHUNK)
            following = b""
        if on_bytes is not None:
            on_bytes(len(pending))
        pending = following
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return digest.hexdigest(), sent_all


@dataclass(frozen=True)
class Contents:
    """What `pg_restore --list` made of a dump, and the sha256 of the whole stream it was given."""

    toc: list[str]
    sha256: str
    error: str | None


def list_contents(src: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Contents:
    """`pg_restore --list` of a custom-format dump read from a stream, hashing the whole stream in the same pass
    (pg_restore stops reading after the table of contents; the rest is only hashed)."""
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        outlog, errlog = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with outlog.open("wb") as out, errlog.open("wb") as err:
            proc = subprocess.Popen([tool("pg_restore"), "--list"], stdin=subprocess.PIPE, stdout=out, stderr=err)
            try:
                sha, _ = _feed(proc, src, on_bytes, None)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
        error = None
        if rc != 0:
            error = f"pg_restore --list failed (exit {rc}): {_last_lines(errlog, PgTarget('', None))}"
        toc = [ln for ln in outlog.read_text("utf-8", "replace").splitlines() if ln and not ln.startswith(";")]
        return Contents(toc, sha, error)


_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ")


def tables_with_data(toc: Iterable[str]) -> set[str]:
    """Names of the public tables a dump holds data for (from `list_contents`)."""
    found = set()
    for line in toc:
        match = _TABLE_DATA.match(line)
        if match and match.group(1) == "public":
            found.add(match.group(2))
    return found


def restore(
    target: PgTarget,
    src: IO[bytes],
    expected_sha256: str,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Restore a custom-format dump read from a stream, in one transaction, replacing the objects it contains.

    The stream is hashed on the way; when it does not match `expected_sha256`, the restore is abandoned before its
    last bytes, so nothing commits.
    """
    args = [
        tool("pg_restore"),
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        f"--dbname={target.url}",
    ]
    with tempfile.TemporaryDirectory(prefix="ttd-pg-") as tmp:
        errlog = Path(tmp) / "stderr"
        with errlog.open("wb") as err:
            proc = subprocess.Popen(args, env=target.env(), stdin=subprocess.PIPE, stdout=err, stderr=err)
            try:
                sha, sent_all = _feed(proc, src, on_bytes, expected_sha256)
                if sha != expected_sha256:
                    raise PgError("the dump changed while it was restored (sha256 mismatch); nothing was committed")
            except BaseException:
                proc.kill()
                proc.wait()
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                raise
            rc = proc.wait()
        if rc != 0 or not sent_all:
            raise PgError(f"pg_restore failed (exit {rc}); nothing was committed: {_last_lines(errlog, target)}")


async def _run_tool(args: list[str], target: PgTarget, what: str) -> str:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=target.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    log.info(
        f"{what} finished", extra={"exit_status": proc.returncode, "seconds": round(time.monotonic() - started, 3)}
    )
    if proc.returncode != 0:
        raise PgError(f"{what} failed (exit {proc.returncode}): {error_tail(err.decode('utf-8', 'replace'), target)}")
    return out.decode("utf-8", "replace")


def _reset_dir(path: Path) -> None:
    """Remove `path` (a previous, possibly partial dump) and make sure its parent exists."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def dump_database(source_url: str, out_dir: Path, jobs: int) -> dict[str, Any]:
    """`pg_dump -Fd -j N`: one consistent snapshot (the workers share it), compressed, in parallel."""
    source = PgTarget.from_url(source_url)
    await asyncio.to_thread(_reset_dir, out_dir)
    started = time.monotonic()
    await _run_tool(
        [
            tool("pg_dump"),
            "--format=directory",
            f"--jobs={jobs}",
            "--no-owner",
            "--no-privileges",
            f"--file={out_dir}",
            f"--dbname={source.url}",
        ],
        source,
        "pg_dump",
    )
    return {"bytes": dir_size(out_dir), "seconds": round(time.monotonic() - started, 3)}


async def restore_database(target_url: str, dump_dir: Path, jobs: int) -> dict[str, Any]:
    """`pg_restore --clean -j N` into the target: every object of the dump replaced, rows exactly the dump's."""
    target = PgTarget.from_url(target_url)
    started = time.monotonic()
    await _run_tool(
        [
            tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--jobs={jobs}",
            f"--dbname={target.url}",
            str(dump_dir),
        ],
        target,
        "pg_restore",
    )
    return {"seconds": round(time.monotonic() - started, 3)}


async def pg_dump_major() -> int:
    proc = await asyncio.create_subprocess_exec(tool("pg_dump"), "--version", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    match = re.search(r"(\d+)(?:\.\d+)?", out.decode())
    if not match:
        raise PgError("cannot read pg_dump --version")
    return int(match.group(1))


async def ensure_database(admin_url: str, name: str, *, recreate: bool = False) -> str:
    """Create database `name` on the server of `admin_url` (dropping it first with `recreate`); its URL."""
    conn = await connect(PgTarget.from_url(admin_url))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        if recreate:
            await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
    return with_database(admin_url, name)
