"""Moving the data: PostgreSQL (directory-format dumps, parallel), Redis (key by key), uploads (rsync).

The toolkit runs on an operator's machine (or the target itself). It reads the source's database and Redis over
their URLs (TLS honoured), reaches the target's through SSH tunnels (`Transport.forward`), and relays the uploads
through a local staging copy with rsync (incremental, so the final pass during the freeze moves only the delta).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from timetodo.core.logging import mask_secrets
from timetodo.ops.postgres import PgError, PgTarget, connect, tool
from timetodo.ops.ssh import SSHTarget, Transport, openssh_options

log = logging.getLogger("timetodo.ops.copy")
INCOMING = ".incoming"
Progress = Callable[[int, int | None], None]


class CopyError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


# ------------------------------------------------------------------------------------------------------ PostgreSQL


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
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
        raise CopyError(f"{what} failed (exit {proc.returncode}): {target.scrub(' | '.join(errors[-3:]))[:600]}")
    return out.decode("utf-8", "replace")


def _reset_dir(path: Path) -> None:
    """Remove `path` (a previous, possibly partial dump) and make sure its parent exists."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _mkdirs(*paths: str) -> None:
    for path in paths:
        Path(path).mkdir(parents=True, exist_ok=True)


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
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


# ----------------------------------------------------------------------------------------------------------- Redis


@dataclass
class RedisCopy:
    keys: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


async def copy_redis(
    source_url: str,
    target_url: str,
    *,
    connections: int = 2,
    batch: int = 1000,
    flush_target: bool = False,
    progress: Progress | None = None,
) -> RedisCopy:
    """Every key of the source's database onto the target's: SCAN, then DUMP + PTTL and RESTORE … ABSTTL REPLACE
    in pipelined batches over `connections` connection pairs (threads). Keys gone between SCAN and DUMP are skipped
    and counted; the absolute expiry keeps TTLs exact however long the copy takes."""
    try:
        return await asyncio.to_thread(
            _copy_redis_sync, source_url, target_url, connections, batch, flush_target, progress
        )
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise CopyError(f"Redis unreachable: {mask_secrets(str(exc))}", "check the Redis URLs") from None
    except redis_errors.ResponseError as exc:
        raise CopyError(
            f"Redis refused a command: {mask_secrets(str(exc))}",
            "the target Redis must be the same engine and at least the source's version (RESTORE of DUMP payloads)",
        ) from None


def _copy_redis_sync(
    source_url: str, target_url: str, connections: int, batch: int, flush_target: bool, progress: Progress | None
) -> RedisCopy:
    """The synchronous client (with hiredis) in threads: on a busy 2-core host it moves about twice the keys per
    second of the asyncio client, and the sockets' waits overlap across threads."""
    result = RedisCopy()
    started = time.monotonic()
    lock = threading.Lock()
    local = threading.local()
    scan_client = sync_redis.Redis.from_url(source_url, socket_connect_timeout=10, socket_timeout=60)
    clients: list[sync_redis.Redis] = [scan_client]

    def pair() -> tuple[sync_redis.Redis, sync_redis.Redis]:
        if not hasattr(local, "pair"):
            src = sync_redis.Redis.from_url(source_url, socket_connect_timeout=10, socket_timeout=60)
            dst = sync_redis.Redis.from_url(target_url, socket_connect_timeout=10, socket_timeout=60)
            with lock:
                clients.extend((src, dst))
            local.pair = (src, dst)
        return local.pair  # type: ignore[no-any-return]

    def move(keys: list[bytes]) -> None:
        src, dst = pair()
        pipe = src.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        values = pipe.execute()
        now_ms = int(time.time() * 1000)
        out = dst.pipeline(transaction=False)
        moved = skipped = 0
        for key, payload, pttl in zip(keys, values[0::2], values[1::2], strict=True):
            if payload is None or pttl == -2:
                skipped += 1
            elif pttl >= 0:
                out.restore(key, now_ms + max(int(pttl), 1), payload, replace=True, absttl=True)
                moved += 1
            else:
                out.restore(key, 0, payload, replace=True)
                moved += 1
        if moved:
            out.execute()
        with lock:
            result.keys += moved
            result.skipped += skipped
            if progress is not None:
                progress(result.keys + result.skipped, total)

    try:
        total = int(scan_client.dbsize())
        if flush_target:
            flusher = sync_redis.Redis.from_url(target_url, socket_connect_timeout=10, socket_timeout=300)
            clients.append(flusher)
            flusher.flushdb()
        with ThreadPoolExecutor(max_workers=connections) as pool:
            pending: set[Future[None]] = set()
            seen: set[bytes] = set()
            chunk: list[bytes] = []
            for key in scan_client.scan_iter(count=batch):
                if key in seen:  # SCAN may return a key twice
                    continue
                seen.add(key)
                chunk.append(key)
                if len(chunk) == batch:
                    pending.add(pool.submit(move, chunk))
                    chunk = []
                    if len(pending) >= connections * 2:  # bounded memory: wait for the oldest batches
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            future.result()
            if chunk:
                pending.add(pool.submit(move, chunk))
            for future in pending:
                future.result()
    finally:
        for client in clients:
            client.close()
    result.seconds = time.monotonic() - started
    return result


async def redis_version(url: str) -> tuple[str, str]:
    """(engine, version) from INFO server, e.g. ("redis", "7.0.15") or ("valkey", "8.0.1")."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=10)
    try:
        info = await client.info("server")
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise CopyError(f"Redis unreachable at {mask_secrets(url)}: {mask_secrets(str(exc))}") from None
    finally:
        await client.aclose()
    if "valkey_version" in info:
        return "valkey", str(info["valkey_version"])
    return "redis", str(info.get("redis_version", "0"))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def restore_compatible(source_engine: str, source_version: str, target_engine: str, target_version: str) -> bool:
    """Can the target RESTORE the source's DUMP payloads? A payload carries its RDB version, which only an equal or
    newer server reads: same engine needs major.minor ≥ the source's. Valkey forked Redis 7.2 (both report their
    Redis-compatible version in INFO): across the two, payloads of Redis ≤ 7.2 are fine, later ones (RDB 12+) not."""
    source, target = version_tuple(source_version)[:2], version_tuple(target_version)[:2]
    if target < source:
        return False
    if source_engine == target_engine:
        return True
    return {source_engine, target_engine} == {"redis", "valkey"} and source <= (7, 2)


# --------------------------------------------------------------------------------------------------------- uploads


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


async def rsync(src: Place, dst: Place, *, delete: bool = True) -> dict[str, Any]:
    """rsync -a from `src` to `dst` (at most one side remote), leaving out in-progress uploads."""
    if src.ssh and dst.ssh:
        raise CopyError("rsync between two remote hosts: relay through a local directory")
    remote = src.ssh or dst.ssh
    args = ["rsync", "-a", "--stats", "--partial", f"--exclude=/{INCOMING}/"]
    if delete:
        args.append("--delete")
    if remote:
        args += ["-e", ssh_command(remote)]
    await asyncio.to_thread(_mkdirs, *(p.path for p in (src, dst) if not p.ssh))
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
    if proc.returncode != 0:
        raise CopyError(
            f"rsync {src.rsync_path()} → {dst.rsync_path()} failed (exit {proc.returncode}): "
            f"{mask_secrets(err.decode('utf-8', 'replace').strip()[-400:])}",
            "check the SSH access and that rsync is installed on both sides",
        )
    match = _STATS.search(out.decode("utf-8", "replace"))
    files = int(match.group(1).replace(",", "")) if match else 0
    size = int(match.group(2).replace(",", "")) if match else 0
    return {"files": files, "bytes": size, "seconds": round(seconds, 3)}


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
