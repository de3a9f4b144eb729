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
import logging
import os
import re
import shlex
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote, quote_plus

from timetodo.core.logging import mask_secrets
from timetodo.ops.errors import EXIT_REFUSED, EXIT_UNREACHABLE, OpsError

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
PID_LINE = re.compile(rb"(?m)^__ttd_pid__=(\d+)\n")

Command = str | list[str]
Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------------------- errors


class TransportError(OpsError):
    """A transport operation failed. `hint` says what to change to make it work."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint)


class ConnectError(TransportError):
    """The host could not be reached: refused, unreachable, timed out, or the connection was lost."""

    exit_code = EXIT_UNREACHABLE


class AuthError(TransportError):
    """The SSH server rejected the key (or the key file could not be read)."""

    exit_code = EXIT_UNREACHABLE


class HostKeyError(TransportError):
    """The host key is not in known_hosts (unknown) or differs from the one recorded there (changed)."""

    exit_code = EXIT_REFUSED


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


class ProcessHandle(Protocol):
    """One running command, as `BaseTransport._execute` drives it."""

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


class BaseTransport:
    """Shared command driver: stdin feeding, output pumping, timeouts, logging, errors."""

    async def __aenter__(self) -> BaseTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        return None

    async def forward(self, host: str, port: int) -> tuple[str, int]:
        return host, port

    def describe(self) -> str:
        raise NotImplementedError

    async def _start(self, command: str, env: dict[str, str]) -> tuple[ProcessHandle, bytes]:
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
            process: ProcessHandle | None = None
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
        process: ProcessHandle,
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

    async def _kill_quietly(self, process: ProcessHandle) -> None:
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
