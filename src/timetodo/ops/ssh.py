"""Transport for the migration steps: run commands and move files on a host, over SSH (asyncssh) or locally.

Every step talks to a host through the `Transport` protocol, so the same code drives a remote VPS over SSH and
the machine it runs on (`LocalTransport`). Commands run through the host's shell (`sh -c` locally, the login shell
over SSH); a `list[str]` command is quoted with `shlex.join` first.

Guarantees:
- Every command is logged on `timetodo.ops.ssh` at INFO with the transport, the command (each string of `secrets`
  and URL passwords replaced by `***`), the exit status and the duration. stdin and env values are never logged.
- env values never reach a command line (where `ps` on the host would show them) nor need `AcceptEnv` on the
  server: over SSH they are sent as the first bytes of stdin and read by the remote shell with `head -c`.
- A command that times out (or whose caller fails or is cancelled) is killed with its whole process group,
  pipelines and children included, and `CommandTimeout` is raised.
- Host keys are checked against a known_hosts file. An unknown key is refused unless `accept_new_host_key`, which
  appends it once the connection is established; a changed key is always refused.
- Files are written atomically (a temporary file next to the target, then a rename), so a reader never sees a
  partial file and an interrupted transfer leaves the old file in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import re
import secrets as _secrets
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus

import asyncssh

from timetodo.core.logging import mask_secrets

logger = logging.getLogger("timetodo.ops.ssh")

# asyncssh logs every command line verbatim at INFO ("Command: ..."), secrets included: keep its loggers at WARNING
# unless the application chose a level for them itself. Our own log line (masked) replaces it.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

CHUNK = 256 * 1024
KILL_GRACE = 2.0
STDERR_TAIL_LINES = 20
MAX_SESSIONS = 8
"""Exec channels open at once on one SSH connection (OpenSSH's MaxSessions defaults to 10; SFTP takes one)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PID_LINE = re.compile(rb"(?m)^__ttd_pid__=(\d+)\n")

Command = str | list[str]
Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------------------- errors


class TransportError(Exception):
    """A transport operation failed. `hint` says what to change to make it work."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConnectError(TransportError):
    """The host could not be reached: refused, unreachable, timed out, or the connection was lost."""


class AuthError(TransportError):
    """The SSH server rejected the key (or the key file could not be read)."""


class HostKeyError(TransportError):
    """The host key is not in known_hosts (unknown) or differs from the one recorded there (changed)."""


class CommandFailed(TransportError):
    """A command exited with a non-zero status (only raised with `check=True`)."""

    def __init__(self, result: CommandResult, where: str, stderr_tail: str) -> None:
        self.result = result
        self.command = result.command
        self.exit_status = result.exit_status
        self.stderr_tail = stderr_tail
        self.where = where
        message = f"command failed on {where} with exit status {result.exit_status}: {result.command}"
        if stderr_tail:
            message += "\n" + stderr_tail
        super().__init__(message, hint=f"read the error output above and fix the cause on {where}, then run again")


class CommandTimeout(TransportError):
    """A command ran longer than its timeout; it was killed with its process group."""

    def __init__(self, command: str, where: str, timeout: float) -> None:
        self.command = command
        self.where = where
        self.timeout = timeout
        super().__init__(
            f"command timed out after {timeout:g}s on {where} and was killed: {command}",
            hint=f"find out why it hangs on {where} (locks, network, prompts) or give it a longer timeout",
        )


# -------------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CommandResult:
    """What a command did. `command` is the masked form that was logged; `exit_status` is negative (minus the
    signal number) when the command was killed by a signal; `stdout` is empty when it went to a `stdout_sink`."""

    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True, kw_only=True)
class SSHTarget:
    """Where and how to connect. `known_hosts=None` means `~/.ssh/known_hosts`."""

    host: str
    port: int = 22
    user: str
    key_file: Path
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 4

    @property
    def key_path(self) -> Path:
        return Path(self.key_file).expanduser()

    @property
    def known_hosts_path(self) -> Path:
        if self.known_hosts is None:
            return Path.home() / ".ssh" / "known_hosts"
        return Path(self.known_hosts).expanduser()

    @property
    def host_pattern(self) -> str:
        """The host as known_hosts writes it: `host` on port 22, `[host]:port` otherwise."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user}@{host}:{self.port}"


# ---------------------------------------------------------------------------------------------------- the protocol


@runtime_checkable
class Transport(Protocol):
    """Commands and files on one host. Paths are the host's paths (relative ones: to the login directory)."""

    def describe(self) -> str:
        """`ssh://user@host:port` or `local`."""
        ...

    async def run(
        self,
        command: Command,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline of the remote command, enforced here
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        secrets: Sequence[str] = (),
    ) -> CommandResult: ...

    async def stream(
        self,
        command: Command,
        *,
        stdin_source: AsyncIterable[bytes] | None = None,
        stdout_sink: Callable[[bytes], Awaitable[None]] | None = None,
        timeout: float,  # noqa: ASYNC109 - the deadline of the remote command, enforced here
        env: dict[str, str] | None = None,
        check: bool = True,
        secrets: Sequence[str] = (),
    ) -> CommandResult:
        """Like `run`, with stdin fed from `stdin_source` and stdout handed chunk by chunk to `stdout_sink`
        (then `CommandResult.stdout` is empty). Nothing is buffered on disk on either side."""
        ...

    async def put_file(
        self, local: Path, remote: str, *, mode: int | None = None, progress: Progress | None = None
    ) -> None:
        """Upload atomically; `mode=None` keeps the local file's mode. Parent directories are created."""
        ...

    async def get_file(self, remote: str, local: Path, *, progress: Progress | None = None) -> None:
        """Download atomically, keeping the remote file's mode. Parent directories are created."""
        ...

    async def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        """Write UTF-8 text atomically (temporary file with `mode` from the start, then rename)."""
        ...

    async def read_text(self, remote: str) -> str:
        """Read a UTF-8 file; FileNotFoundError when it does not exist."""
        ...

    async def exists(self, remote: str) -> bool: ...

    async def free_bytes(self, remote_dir: str) -> int:
        """Bytes available to an unprivileged user on the file system holding `remote_dir` (or its nearest
        existing parent, so it can be asked before the directory is created)."""
        ...

    async def forward(self, host: str, port: int) -> tuple[str, int]:
        """A local address that reaches `host:port` as seen from this host (an SSH tunnel for remote hosts), so a
        database or Redis listening only on the target's loopback is reachable without publishing a port."""
        ...

    async def close(self) -> None: ...


# -------------------------------------------------------------------------------------------------------- helpers


def openssh_options(target: SSHTarget) -> list[str]:
    """Options that make the OpenSSH client (rsync's `-e`, tunnels) trust exactly what this transport trusts: the
    same key and known_hosts, strict host-key checking, never a prompt."""
    known = target.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
    return [
        "-p", str(target.port), "-i", str(target.key_file), "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={int(target.connect_timeout)}",
    ]  # fmt: skip


def mask_command(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every secret (also shell-quoted or URL-encoded) and every URL password replaced by `***`."""
    variants: set[str] = set()
    for secret in secrets:
        if secret:
            variants.update({secret, shlex.quote(secret), quote(secret, safe=""), quote_plus(secret)})
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, "***")
    return mask_secrets(text)


def _command_text(command: Command) -> str:
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("empty command")
        return command
    if not command:
        raise ValueError("empty command")
    return shlex.join(command)


def _check_env(env: dict[str, str] | None) -> dict[str, str]:
    for name in env or {}:
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    return dict(env or {})


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class _Process(Protocol):
    """One running command, as `_BaseTransport._execute` drives it."""

    async def write(self, data: bytes) -> bool:
        """Send stdin; False when the command no longer reads it."""
        ...

    async def close_stdin(self) -> None: ...

    async def read_stdout(self) -> bytes: ...

    async def read_stderr(self) -> bytes: ...

    async def wait(self) -> int | None:
        """Exit status (negative signal number when killed); None when the connection was lost."""
        ...

    async def kill(self) -> None:
        """Stop the command and everything it started."""
        ...


@dataclass
class _Output:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)


class _BaseTransport:
    """Shared command driver: stdin feeding, output pumping, timeouts, logging, errors."""

    async def __aenter__(self) -> _BaseTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        return None

    async def forward(self, host: str, port: int) -> tuple[str, int]:
        return host, port

    def describe(self) -> str:
        raise NotImplementedError

    async def _start(self, command: str, env: dict[str, str]) -> tuple[_Process, bytes]:
        """Start `command`; returns the process and the bytes to send on stdin before the caller's input."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        yield

    async def run(
        self,
        command: Command,
        *,
        timeout: float,  # noqa: ASYNC109 - the deadline of the remote command, enforced here
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        secrets: Sequence[str] = (),
    ) -> CommandResult:
        async def once() -> AsyncIterator[bytes]:
            if input:
                yield input

        return await self.stream(command, stdin_source=once(), timeout=timeout, env=env, check=check, secrets=secrets)

    async def stream(
        self,
        command: Command,
        *,
        stdin_source: AsyncIterable[bytes] | None = None,
        stdout_sink: Callable[[bytes], Awaitable[None]] | None = None,
        timeout: float,  # noqa: ASYNC109 - the deadline of the remote command, enforced here
        env: dict[str, str] | None = None,
        check: bool = True,
        secrets: Sequence[str] = (),
    ) -> CommandResult:
        text = _command_text(command)
        env = _check_env(env)
        masked = mask_command(text, secrets)
        where = self.describe()
        output = _Output()
        started = time.monotonic()
        async with self._slot():
            deadline = asyncio.timeout(timeout)
            process: _Process | None = None
            try:
                async with deadline:
                    process, prelude = await self._start(text, env)
                    status = await self._drive(process, prelude, stdin_source, stdout_sink, output)
            except TimeoutError:
                if not deadline.expired():
                    raise
                duration = time.monotonic() - started
                if process is not None:
                    await self._kill_quietly(process)
                self._log(where, masked, "timeout", duration)
                raise CommandTimeout(masked, where, timeout) from None
            except BaseException:
                if process is not None:
                    await self._kill_quietly(process)
                self._log(where, masked, "aborted", time.monotonic() - started)
                raise
        duration = time.monotonic() - started
        if status is None:
            self._log(where, masked, "connection lost", duration)
            raise ConnectError(
                f"connection to {where} was lost while running: {masked}",
                hint="check the host and the network, then run the step again (it resumes)",
            )
        self._log(where, masked, status, duration)
        result = CommandResult(masked, status, _decode(output.stdout), _decode(output.stderr), duration)
        if check and status != 0:
            raise CommandFailed(result, where, mask_command(_tail(result.stderr), secrets))
        return result

    async def _drive(
        self,
        process: _Process,
        prelude: bytes,
        source: AsyncIterable[bytes] | None,
        sink: Callable[[bytes], Awaitable[None]] | None,
        output: _Output,
    ) -> int | None:
        async def feed() -> None:
            if prelude and not await process.write(prelude):
                return
            if source is not None:
                async for chunk in source:
                    if chunk and not await process.write(chunk):  # the command stopped reading: its status tells
                        aclose = getattr(source, "aclose", None)
                        if aclose is not None:
                            await aclose()
                        return
            await process.close_stdin()

        async def pump_stdout() -> None:
            while chunk := await process.read_stdout():
                if sink is not None:
                    await sink(chunk)
                else:
                    output.stdout += chunk

        async def pump_stderr() -> None:
            while chunk := await process.read_stderr():
                output.stderr += chunk

        tasks = [asyncio.ensure_future(coro) for coro in (feed(), pump_stdout(), pump_stderr())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return await process.wait()

    async def _kill_quietly(self, process: _Process) -> None:
        try:
            async with asyncio.timeout(KILL_GRACE + 10):
                await process.kill()
        except (Exception, asyncio.CancelledError):
            logger.warning("could not make sure a stopped command is gone on %s", self.describe(), exc_info=True)

    def _log(self, where: str, masked: str, status: int | str, duration: float) -> None:
        logger.info(
            "%s $ %s -> exit %s in %.3fs",
            where,
            masked,
            status,
            duration,
            extra={"transport": where, "command": masked, "exit_status": status, "duration_s": round(duration, 3)},
        )

    def _log_file(self, action: str, what: str, size: int, started: float) -> None:
        duration = time.monotonic() - started
        logger.info(
            "%s %s %s (%d bytes) in %.3fs",
            self.describe(),
            action,
            what,
            size,
            duration,
            extra={"transport": self.describe(), "file_op": action, "bytes": size, "duration_s": round(duration, 3)},
        )


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


def _local_temp(target: Path, kind: str) -> Path:
    """An empty private file next to `target` (its parent created), to be renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{kind}-")
    os.close(fd)
    return Path(name)


def _local_finish(tmp: Path, target: Path, mode: int | None) -> None:
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


class LocalTransport(_BaseTransport):
    """This machine: commands through `/bin/sh -c` in their own process group, files by local copy."""

    def describe(self) -> str:
        return "local"

    async def _start(self, command: str, env: dict[str, str]) -> tuple[_Process, bytes]:
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


# ------------------------------------------------------------------------------------------------------------ ssh


class _SSHProcess:
    """A remote command. Its first stderr line (written by our wrapper) is its shell's PID = process group."""

    def __init__(self, transport: SSHTransport, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.transport = transport
        self.proc = proc
        self.pid: int | None = None
        self._pending = bytearray()

    async def write(self, data: bytes) -> bool:
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (OSError, asyncssh.Error):
            return False
        return True

    async def close_stdin(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self.proc.stdin.write_eof()

    async def read_stdout(self) -> bytes:
        return await self._read(self.proc.stdout)

    async def read_stderr(self) -> bytes:
        while True:
            chunk = await self._read(self.proc.stderr)
            if self.pid is not None or (not self._pending and not chunk):
                return chunk
            if not chunk:  # EOF before the PID line: hand over what came
                data, self._pending = bytes(self._pending), bytearray()
                return data
            self._pending += chunk
            match = _PID_LINE.search(self._pending)
            if match:
                self.pid = int(match.group(1))
                data = bytes(self._pending[: match.start()] + self._pending[match.end() :])
                self._pending = bytearray()
                if data:
                    return data
            elif len(self._pending) > 65536:
                self.pid = -1
                data, self._pending = bytes(self._pending), bytearray()
                return data

    async def _read(self, reader: asyncssh.SSHReader[bytes]) -> bytes:
        try:
            return await reader.read(CHUNK)
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError):
            return b""

    async def wait(self) -> int | None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await self.proc.wait_closed()
        return self.proc.returncode

    async def kill(self) -> None:
        self.proc.close()
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            async with asyncio.timeout(KILL_GRACE):
                await self.proc.wait_closed()
        if self.pid is not None and self.pid > 0:
            await self.transport._kill_group(self.pid)


class _HostKeyPolicy(asyncssh.SSHClient):
    """Decides about host keys not trusted by known_hosts: records whether the host is unknown or changed."""

    def __init__(self, target: SSHTarget, known: asyncssh.SSHKnownHosts) -> None:
        self.target = target
        self.known = known
        self.problem: Literal["unknown", "changed"] | None = None
        self.offered: asyncssh.SSHKey | None = None
        self.recorded: list[str] = []
        self.accepted: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key
        match = self.known.match(host, addr, port)
        recorded = list(match[0]) + list(match[1])
        if recorded:
            self.problem = "changed"
            self.recorded = [f"{k.algorithm.decode()} {k.get_fingerprint()}" for k in recorded]
            return False
        self.problem = "unknown"
        if self.target.accept_new_host_key:
            self.accepted = key
            return True
        return False


class SSHTransport(_BaseTransport):
    """A host over SSH (asyncssh). Connects on first use (and again after the connection was lost)."""

    def __init__(self, target: SSHTarget, *, max_sessions: int = MAX_SESSIONS) -> None:
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._forwards: dict[tuple[str, int], tuple[str, Any, int]] = {}
        self._sftp: asyncssh.SFTPClient | None = None
        self._connect_lock = asyncio.Lock()
        self._sftp_lock = asyncio.Lock()
        self._sessions = asyncio.Semaphore(max_sessions)

    def describe(self) -> str:
        return self.target.describe()

    # ---- connection

    async def connect(self) -> asyncssh.SSHClientConnection:
        async with self._connect_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn, self._sftp = await self._open(), None
            return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        t = self.target
        where = t.describe()
        try:
            key = asyncssh.read_private_key(t.key_path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise AuthError(
                f"cannot use SSH key file {t.key_path} for {t.user}@{t.host}: {exc}",
                hint="point key_file at a readable private key without a passphrase (a dedicated deploy key)",
            ) from None
        known_path = t.known_hosts_path
        try:
            known = asyncssh.import_known_hosts(known_path.read_text() if known_path.exists() else "")
        except (OSError, ValueError) as exc:
            raise HostKeyError(
                f"cannot read known_hosts file {known_path}: {exc}",
                hint=f"fix or recreate it, e.g. `ssh-keyscan -p {t.port} {t.host} >> {known_path}`",
            ) from None
        policy = _HostKeyPolicy(t, known)
        try:
            async with asyncio.timeout(t.connect_timeout + 5):
                conn = await asyncssh.connect(
                    t.host,
                    t.port,
                    username=t.user,
                    client_keys=[key],
                    known_hosts=known,
                    client_factory=lambda: policy,
                    config=None,
                    agent_path=None,
                    password=None,
                    kbdint_auth=False,
                    gss_host=None,
                    preferred_auth="publickey",
                    connect_timeout=t.connect_timeout,
                    login_timeout=t.connect_timeout,
                    keepalive_interval=t.keepalive_interval,
                    keepalive_count_max=t.keepalive_count_max,
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_error(policy, str(exc)) from None
        except asyncssh.PermissionDenied:
            raise AuthError(
                f"{where} refused the key {t.key_path} for user {t.user!r}",
                hint=(
                    f"add {t.key_path}.pub to ~{t.user}/.ssh/authorized_keys on the host "
                    f"(`ssh-copy-id -i {t.key_path} -p {t.port} {t.user}@{t.host}`), or fix user/key_file"
                ),
            ) from None
        except TimeoutError:
            raise ConnectError(
                f"no SSH answer from {where} within {t.connect_timeout:g}s",
                hint="check the host name and port, that sshd runs there and that a firewall lets the port through",
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(
                f"cannot connect to {where}: {exc}",
                hint="check the host name and port, that sshd runs there and that a firewall lets the port through",
            ) from None
        if policy.accepted is not None:
            self._remember_host_key(policy.accepted)
        logger.info("connected to %s", where, extra={"transport": where})
        return conn

    def _host_key_error(self, policy: _HostKeyPolicy, detail: str) -> HostKeyError:
        t = self.target
        path = t.known_hosts_path
        offered = f"{policy.offered.algorithm.decode()} {policy.offered.get_fingerprint()}" if policy.offered else "?"
        keyscan = f"ssh-keyscan -p {t.port} {t.host} >> {path}"
        if policy.problem == "changed":
            return HostKeyError(
                f"the host key of {t.host_pattern} has CHANGED: {path} records {', '.join(policy.recorded)}, "
                f"the server offered {offered}. Someone may be intercepting the connection, or the host was "
                "reinstalled. Refusing to connect (--accept-new-host-key never replaces a recorded key).",
                hint=(
                    "check the new key out of band (e.g. the provider's console), then remove the old entry with "
                    f"`ssh-keygen -R '{t.host_pattern}' -f {path}` and add the new one with `{keyscan}`"
                ),
            )
        if policy.problem == "unknown":
            return HostKeyError(
                f"the host key of {t.host_pattern} ({offered}) is unknown: it is not in {path}",
                hint=f"check the fingerprint, then add it with `{keyscan}`, or pass --accept-new-host-key",
            )
        return HostKeyError(f"host key of {t.host_pattern} not accepted: {detail}", hint=f"`{keyscan}`")

    def _remember_host_key(self, key: asyncssh.SSHKey) -> None:
        path = self.target.known_hosts_path
        public = key.export_public_key("openssh").decode().split()
        line = f"{self.target.host_pattern} {public[0]} {public[1]}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_text() if path.exists() else ""
        with path.open("a") as handle:
            if existing and not existing.endswith("\n"):
                handle.write("\n")
            handle.write(line)
        logger.warning(
            "accepted new host key %s %s for %s into %s",
            public[0],
            key.get_fingerprint(),
            self.target.host_pattern,
            path,
            extra={"transport": self.describe()},
        )

    async def forward(self, host: str, port: int) -> tuple[str, int]:
        """Bulk data (database restores, Redis copies) goes through an OpenSSH client process (`ssh -N -L`), so the
        encryption runs in C on another core; asyncssh's own forwarding serves when no `ssh` binary exists."""
        key = (host, port)
        if key not in self._forwards:
            await self.connect()  # checks (and with accept_new_host_key records) the host key first
            ssh = shutil.which("ssh")
            if ssh is None:
                conn = await self.connect()
                listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
                self._forwards[key] = ("asyncssh", listener, listener.get_port())
            else:
                self._forwards[key] = ("openssh", *await self._openssh_forward(ssh, host, port))
            logger.info(
                "forwarding",
                extra={"transport": self.describe(), "to": f"{host}:{port}", "local_port": self._forwards[key][2]},
            )
        return "127.0.0.1", int(self._forwards[key][2])

    async def _openssh_forward(self, ssh: str, host: str, port: int) -> tuple[asyncio.subprocess.Process, int]:
        t = self.target
        for _attempt in range(3):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                local_port = int(probe.getsockname()[1])
            proc = await asyncio.create_subprocess_exec(
                ssh,
                "-N",
                *openssh_options(t),
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "ServerAliveInterval=15",
                "-L",
                f"127.0.0.1:{local_port}:{host}:{port}",
                f"{t.user}@{t.host}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            deadline = asyncio.get_running_loop().time() + t.connect_timeout + 5
            while asyncio.get_running_loop().time() < deadline and proc.returncode is None:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
                    writer.close()
                    return proc, local_port
                except OSError:
                    await asyncio.sleep(0.05)
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            assert proc.stderr is not None
            error = (await proc.stderr.read()).decode("utf-8", "replace").strip()
            if "Address already in use" not in error:  # a port taken meanwhile: try another one
                raise ConnectError(
                    f"cannot open a tunnel to {host}:{port} through {self.describe()}: {mask_secrets(error)[-300:]}",
                    hint="check that the service listens there on the target",
                )
        raise ConnectError(f"cannot open a tunnel to {host}:{port} through {self.describe()}")

    async def close(self) -> None:
        for kind, handle, _port in self._forwards.values():
            if kind == "openssh":
                with contextlib.suppress(ProcessLookupError):
                    handle.terminate()
                await handle.wait()
            else:
                handle.close()
                with contextlib.suppress(Exception):
                    await handle.wait_closed()
        self._forwards.clear()
        if self._sftp is not None:
            self._sftp.exit()
            with contextlib.suppress(Exception):
                await self._sftp.wait_closed()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
            self._conn = None

    # ---- commands

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._sessions:
            yield

    async def _start(self, command: str, env: dict[str, str]) -> tuple[_Process, bytes]:
        conn = await self.connect()
        prelude = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()).encode()
        lines = ["printf '__ttd_pid__=%s\\n' \"$$\" >&2"]
        if prelude:
            lines.append(f'eval "$(head -c {len(prelude)})" || exit 125')
        lines.append(command)
        try:
            proc = await conn.create_process("\n".join(lines), encoding=None)
        except asyncssh.ChannelOpenError as exc:
            raise TransportError(
                f"{self.describe()} refused a new session: {exc.reason}",
                hint="raise MaxSessions in the host's sshd_config or run fewer commands at once",
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(f"lost the connection to {self.describe()}: {exc}", hint="run the step again") from None
        return _SSHProcess(self, proc), prelude

    async def _kill_group(self, pid: int) -> None:
        script = (
            f"kill -TERM -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null || exit 0\n"
            f"i=0; while [ $i -lt {int(KILL_GRACE * 10)} ] && kill -0 -{pid} 2>/dev/null; do sleep 0.1; i=$((i+1)); done\n"
            f"kill -KILL -{pid} 2>/dev/null; exit 0"
        )
        started = time.monotonic()
        conn = await self.connect()
        result = await conn.run(script, check=False, timeout=KILL_GRACE + 8)
        self._log(self.describe(), f"kill process group {pid}", result.returncode or 0, time.monotonic() - started)

    # ---- files

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        async with self._sftp_lock:
            conn = await self.connect()
            if self._sftp is None:
                try:
                    self._sftp = await conn.start_sftp_client()
                except (OSError, asyncssh.Error) as exc:
                    raise TransportError(
                        f"cannot start SFTP on {self.describe()}: {exc}",
                        hint="enable the sftp subsystem in the host's sshd_config (Subsystem sftp internal-sftp)",
                    ) from None
            return self._sftp

    @contextlib.contextmanager
    def _file_errors(self, action: str, path: str) -> Iterator[None]:
        try:
            yield
        except asyncssh.SFTPNoSuchFile:
            raise FileNotFoundError(errno.ENOENT, f"no such file on {self.describe()}", path) from None
        except (asyncssh.SFTPConnectionLost, asyncssh.ConnectionLost, asyncssh.DisconnectError) as exc:
            self._sftp = None
            raise ConnectError(f"lost the connection to {self.describe()} during {action} {path}: {exc}") from None
        except asyncssh.SFTPError as exc:
            raise TransportError(
                f"{action} {path} on {self.describe()} failed: {exc.reason}",
                hint=f"check the path, its permissions and the free space on {self.describe()}",
            ) from None

    async def _makedirs_for(self, sftp: asyncssh.SFTPClient, remote: str) -> None:
        parent = posixpath.dirname(remote)
        if parent and parent != "/":
            await sftp.makedirs(parent, exist_ok=True)

    @staticmethod
    def _temp_name(remote: str, kind: str) -> str:
        directory, name = posixpath.split(remote)
        return posixpath.join(directory, f".{name}.{kind}-{_secrets.token_hex(4)}")

    async def _replace(self, sftp: asyncssh.SFTPClient, tmp: str, remote: str) -> None:
        try:
            await sftp.posix_rename(tmp, remote)
        except asyncssh.SFTPOpUnsupported:
            if await sftp.exists(remote):
                await sftp.remove(remote)
            await sftp.rename(tmp, remote)

    async def put_file(
        self, local: Path, remote: str, *, mode: int | None = None, progress: Progress | None = None
    ) -> None:
        started = time.monotonic()
        local = Path(local)
        info = local.stat()
        final_mode = mode if mode is not None else stat.S_IMODE(info.st_mode)
        sftp = await self._sftp_client()
        tmp = self._temp_name(remote, "part")

        def report(_src: bytes, _dst: bytes, done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)

        with self._file_errors("upload to", remote):
            await self._makedirs_for(sftp, remote)
            try:
                # created private first, so the content is never readable under a wider mode
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=0o600)):
                    pass
                await sftp.put(str(local), tmp, progress_handler=report)
                await sftp.chmod(tmp, final_mode)
                await self._replace(sftp, tmp, remote)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(tmp)
                raise
        if progress is not None and info.st_size == 0:
            progress(0, 0)
        self._log_file("put", f"{local} -> {remote}", info.st_size, started)

    async def get_file(self, remote: str, local: Path, *, progress: Progress | None = None) -> None:
        started = time.monotonic()
        local = Path(local)
        sftp = await self._sftp_client()

        def report(_src: bytes, _dst: bytes, done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)

        with self._file_errors("download of", remote):
            attrs = await sftp.stat(remote)
        tmp = await asyncio.to_thread(_local_temp, local, "part")
        try:
            with self._file_errors("download of", remote):
                await sftp.get(remote, str(tmp), progress_handler=report)
            mode = stat.S_IMODE(attrs.permissions) if attrs.permissions is not None else None
            await asyncio.to_thread(_local_finish, tmp, local, mode)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        size = attrs.size or 0
        if progress is not None and size == 0:
            progress(0, 0)
        self._log_file("get", f"{remote} -> {local}", size, started)

    async def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        started = time.monotonic()
        data = text.encode()
        sftp = await self._sftp_client()
        tmp = self._temp_name(remote, "tmp")
        with self._file_errors("write of", remote):
            await self._makedirs_for(sftp, remote)
            try:
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode & 0o700)) as handle:
                    await handle.write(data)
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                        await handle.fsync()
                await sftp.chmod(tmp, mode)
                await self._replace(sftp, tmp, remote)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(tmp)
                raise
        self._log_file("write", remote, len(data), started)

    async def read_text(self, remote: str) -> str:
        sftp = await self._sftp_client()
        with self._file_errors("read of", remote):
            async with sftp.open(remote, "r", encoding="utf-8") as handle:
                text = await handle.read()
        return str(text)

    async def exists(self, remote: str) -> bool:
        sftp = await self._sftp_client()
        with self._file_errors("lookup of", remote):
            return await sftp.exists(remote)

    async def free_bytes(self, remote_dir: str) -> int:
        sftp = await self._sftp_client()
        path = remote_dir or "."
        with self._file_errors("free space of", remote_dir):
            while True:
                try:
                    vfs = await sftp.statvfs(path)
                    return int(vfs.bavail * vfs.frsize)
                except asyncssh.SFTPNoSuchFile:
                    parent = posixpath.dirname(path.rstrip("/")) or ("/" if path.startswith("/") else ".")
                    if parent == path:
                        raise
                    path = parent
                except asyncssh.SFTPOpUnsupported:
                    return await self._df_free(path)

    async def _df_free(self, path: str) -> int:
        result = await self.run(["df", "-Pk", path], timeout=30)
        return int(result.stdout.strip().splitlines()[-1].split()[3]) * 1024


# ----------------------------------------------------------------------------------------------------------- open


async def open_transport(spec: SSHTarget | Literal["local"] | None = None) -> Transport:
    """A connected transport: `LocalTransport` for None / "local", else an `SSHTransport` (raises the
    `ConnectError` / `AuthError` / `HostKeyError` of the connection attempt right away)."""
    if spec is None or spec == "local":
        return LocalTransport()
    transport = SSHTransport(spec)
    await transport.connect()
    return transport
