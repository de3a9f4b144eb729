"""`SSHTransport`: the `Transport` over one asyncssh connection (exec channels, SFTP, port forwards), host keys checked
against known_hosts (see `transport.base` for the guarantees).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import posixpath
import secrets as _secrets
import shlex
import shutil
import socket
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import asyncssh

from timetodo.core.logging import mask_secrets
from timetodo.ops.adapters.transport.base import (
    CHUNK,
    KILL_GRACE,
    MAX_SESSIONS,
    PID_LINE,
    AuthError,
    BaseTransport,
    ConnectError,
    HostKeyError,
    ProcessHandle,
    Progress,
    SSHTarget,
    TransportError,
    logger,
    openssh_options,
)
from timetodo.ops.adapters.transport.local import local_finish, local_temp

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
            match = PID_LINE.search(self._pending)
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


class SSHTransport(BaseTransport):
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

    def _credentials(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHKnownHosts]:
        """The private key and the known hosts, or AuthError / HostKeyError saying which file is wrong."""
        t = self.target
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
        return key, known

    async def _open(self) -> asyncssh.SSHClientConnection:
        t = self.target
        where = t.describe()
        key, known = self._credentials()
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

    async def _start(self, command: str, env: dict[str, str]) -> tuple[ProcessHandle, bytes]:
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
        tmp = await asyncio.to_thread(local_temp, local, "part")
        try:
            with self._file_errors("download of", remote):
                await sftp.get(remote, str(tmp), progress_handler=report)
            mode = stat.S_IMODE(attrs.permissions) if attrs.permissions is not None else None
            await asyncio.to_thread(local_finish, tmp, local, mode)
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
