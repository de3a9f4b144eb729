"""Running commands and moving files on this machine: the same `Transport` as SSH, for a source or target that is local."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from timetodo.ops.adapters.transport.base import CHUNK, KILL_GRACE, BaseTransport, ProcessHandle, Progress

# ---------------------------------------------------------------------------------------------------------- local


class _LocalProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def write(self, data: bytes) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.close()
            await self.proc.stdin.wait_closed()

    async def read_stdout(self) -> bytes:
        assert self.proc.stdout is not None
        return await self.proc.stdout.read(CHUNK)

    async def read_stderr(self) -> bytes:
        assert self.proc.stderr is not None
        return await self.proc.stderr.read(CHUNK)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                async with asyncio.timeout(KILL_GRACE):
                    await self.proc.wait()
                    while _group_alive(self.proc.pid):  # noqa: ASYNC110 - nothing signals an empty group
                        await asyncio.sleep(0.05)
                return
            except TimeoutError:
                continue


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_temp(target: Path, kind: str) -> Path:
    """An empty private file next to `target` (its parent created), to be renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{kind}-")
    os.close(fd)
    return Path(name)


def local_finish(tmp: Path, target: Path, mode: int | None) -> None:
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(target)


def _copy_file(src: Path, dst: Path, mode: int, progress: Callable[[int, int], None] | None) -> int:
    """Copy `src` to `dst` through a temporary file in dst's directory, then rename. Runs in a thread."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    total = src.stat().st_size
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.part-")
    tmp = Path(tmp_name)
    try:
        done = 0
        with src.open("rb") as reader, os.fdopen(fd, "wb") as writer:
            while chunk := reader.read(CHUNK * 4):
                writer.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            writer.flush()
            os.fchmod(writer.fileno(), mode)
        if progress is not None and total == 0:
            progress(0, 0)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return total


class LocalTransport(BaseTransport):
    """This machine: commands through `/bin/sh -c` in their own process group, files by local copy."""

    def describe(self) -> str:
        return "local"

    async def _start(self, command: str, env: dict[str, str]) -> tuple[ProcessHandle, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
            start_new_session=True,
        )
        return _LocalProcess(proc), b""

    def _threadsafe(self, progress: Progress | None) -> Progress | None:
        if progress is None:
            return None
        loop = asyncio.get_running_loop()

        def report(done: int, total: int) -> None:
            loop.call_soon_threadsafe(progress, done, total)

        return report

    async def put_file(
        self, local: Path, remote: str, *, mode: int | None = None, progress: Progress | None = None
    ) -> None:
        started = time.monotonic()
        local = Path(local)
        final_mode = mode if mode is not None else stat.S_IMODE(local.stat().st_mode)
        size = await asyncio.to_thread(_copy_file, local, Path(remote), final_mode, self._threadsafe(progress))
        self._log_file("put", f"{local} -> {remote}", size, started)

    async def get_file(self, remote: str, local: Path, *, progress: Progress | None = None) -> None:
        started = time.monotonic()
        source = Path(remote)
        mode = stat.S_IMODE((await asyncio.to_thread(source.stat)).st_mode)
        size = await asyncio.to_thread(_copy_file, source, Path(local), mode, self._threadsafe(progress))
        self._log_file("get", f"{remote} -> {local}", size, started)

    async def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        started = time.monotonic()
        data = text.encode()

        def write() -> None:
            target = Path(remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
            try:
                os.fchmod(fd, mode)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(tmp_name).replace(target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise

        await asyncio.to_thread(write)
        self._log_file("write", remote, len(data), started)

    async def read_text(self, remote: str) -> str:
        return await asyncio.to_thread(Path(remote).read_text, "utf-8")

    async def exists(self, remote: str) -> bool:
        return await asyncio.to_thread(Path(remote).exists)

    async def free_bytes(self, remote_dir: str) -> int:
        def free() -> int:
            path = Path(remote_dir).absolute()
            while not path.exists() and path != path.parent:
                path = path.parent
            return shutil.disk_usage(path).free

        return await asyncio.to_thread(free)
