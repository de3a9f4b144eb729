"""`ProcessRuntime`: `timetodo serve` as a plain process from a virtualenv on the target (no container engine)."""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import time
from typing import Any

from timetodo.ops.adapters.transport import Transport, TransportError
from timetodo.ops.migrate.deploy.runtime import (
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_PATH,
    HOST_RE,
    PROBE_PY,
    PROBE_TIMEOUT,
    DeployError,
    DeployResult,
    PlannedCommand,
    RuntimeBase,
    env_secrets,
    parse_env_text,
    stderr_tail,
)

# --------------------------------------------------------------------------------------------------------- process

# Shell functions shared by the process scripts. `alive PID`: the process exists, is not a zombie (PID 1 may not
# reap it) and is a `timetodo serve`.
_ALIVE = r"""alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- ' serve --host '
}"""


class ProcessRuntime(RuntimeBase):
    """`timetodo serve` as a plain process from a virtualenv on the target (no container engine)."""

    name = "process"

    def __init__(
        self,
        transport: Transport,
        app_dir: str,
        *,
        timetodo_bin: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        python_env: dict[str, str] | None = None,
        stop_timeout: float = 30.0,
        command_timeout: float = 600.0,
    ) -> None:
        super().__init__(transport, app_dir, command_timeout=command_timeout)
        if not timetodo_bin.startswith("/"):
            raise ValueError(f"timetodo_bin must be an absolute path on the target (got {timetodo_bin!r})")
        if not HOST_RE.match(host):
            raise ValueError(f"host must be an address (got {host!r})")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {port})")
        self.timetodo_bin = timetodo_bin
        self.python = posixpath.join(posixpath.dirname(timetodo_bin), "python")
        self.listen_host = host
        self.port = port
        self.python_env = dict(python_env or {})
        self._env: dict[str, str] | None = None
        self.stop_timeout = stop_timeout
        self.pid_path = self._path("timetodo.pid")
        self.log_path = self._path("logs", "serve.log")
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        probe_host = f"[{probe_host}]" if ":" in probe_host else probe_host
        self.health_url = f"http://{probe_host}:{port}{HEALTH_PATH}"

    # ---- commands (as shell text; only quoted paths and options, never a secret). The env file's variables are not
    # sourced by a shell (`$`, backticks and `$(...)` in a value would be expanded or run): `app_env()` parses it in
    # Python and the transport hands them to the command as its environment.

    def _in_app_dir(self, *argv: str) -> str:
        return f"cd {shlex.quote(self.app_dir)} && exec {shlex.join(argv)}"

    def migrate_command(self) -> str:
        return self._in_app_dir(self.timetodo_bin, "db", "upgrade")

    def serve_argv(self) -> list[str]:
        return [self.timetodo_bin, "serve", "--host", self.listen_host, "--port", str(self.port), "--no-migrate"]

    def start_command(self) -> str:
        q = shlex.quote
        # the new session's leader writes its own pid, then becomes the server (exec keeps the pid)
        inner = f"echo $$ > {q(self.pid_path)} && exec nohup {shlex.join(self.serve_argv())}"
        return "\n".join(
            [
                _ALIVE,
                f"cd {q(self.app_dir)} || exit 1",
                "mkdir -p logs || exit 1",
                f'if [ -f {q(self.pid_path)} ] && pid=$(cat {q(self.pid_path)}) && alive "$pid"; then',
                '  echo "already running: pid $pid"; exit 0',
                "fi",
                f"rm -f {q(self.pid_path)}",
                f"setsid sh -c {q(inner)} >>{q(self.log_path)} 2>&1 </dev/null &",
                "i=0",
                f'while [ ! -s {q(self.pid_path)} ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done',
                f"[ -s {q(self.pid_path)} ] || {{ echo {q('the server did not start, see ' + self.log_path)} >&2; exit 1; }}",
                f'echo "started: pid $(cat {q(self.pid_path)})"',
            ]
        )

    def stop_command(self) -> str:
        q = shlex.quote
        ticks = max(1, int(self.stop_timeout * 10))
        return "\n".join(
            [
                _ALIVE,
                f'[ -f {q(self.pid_path)} ] || {{ echo "not running"; exit 0; }}',
                f"pid=$(cat {q(self.pid_path)})",
                'if ! alive "$pid"; then',
                f'  rm -f {q(self.pid_path)}; echo "not running (stale pid file $pid removed)"; exit 0',
                "fi",
                'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"',
                "i=0",
                f'while alive "$pid" && [ "$i" -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done',
                'if alive "$pid"; then',
                '  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"',
                '  j=0; while alive "$pid" && [ "$j" -lt 50 ]; do sleep 0.1; j=$((j+1)); done',
                f'  how="killed after {self.stop_timeout:g}s without a graceful exit"',
                "else",
                '  how="stopped gracefully"',
                "fi",
                'kill -KILL -- "-$pid" 2>/dev/null',  # whatever is left of its process group (workers)
                f"rm -f {q(self.pid_path)}",
                'echo "$how: pid $pid"',
            ]
        )

    def status_command(self) -> str:
        q = shlex.quote
        where = f"{self.listen_host}:{self.port}"
        return "\n".join(
            [
                _ALIVE,
                f'[ -f {q(self.pid_path)} ] || {{ echo "stopped"; exit 0; }}',
                f"pid=$(cat {q(self.pid_path)})",
                f'if alive "$pid"; then echo "running: pid $pid, serving {where}"; '
                'else echo "stopped (stale pid file: $pid)"; fi',
            ]
        )

    def _probe_command(self) -> str:
        # the target's python3, or the virtualenv's own python when the host has no python3 on PATH
        q = shlex.quote
        return (
            f"py=python3; command -v python3 >/dev/null 2>&1 || py={q(self.python)}; "
            f'"$py" -c {q(PROBE_PY)} {q(self.health_url)} {PROBE_TIMEOUT:g}'
        )

    # ---- the interface

    async def plan(self) -> list[PlannedCommand]:
        host = self.host
        return [
            PlannedCommand(host, f"write {self.env_path} (mode 0600) from the env file, contents not shown"),
            PlannedCommand(host, self.migrate_command()),
            PlannedCommand(host, "stop the running instance if any: " + self.stop_command()),
            PlannedCommand(host, self.start_command()),
            PlannedCommand(host, f"poll until HTTP 200: {self._probe_command()}"),
        ]

    async def deploy(self, env_text: str, *, health_timeout: float = DEFAULT_HEALTH_TIMEOUT) -> DeployResult:
        started = time.monotonic()
        self._steps = []
        self._env = parse_env_text(env_text)  # refuses an unreadable line before touching the host
        self._secrets = env_secrets(env_text)
        await self._timed("env", self._write_env(env_text))
        await self._timed("migrate", self.migrate_db())
        await self._timed("stop", self._stop_step())
        try:
            await self._timed("start", self._start_step())
            health = await self._timed("health", self.wait_healthy(health_timeout))
        except BaseException:
            await self._stop_quietly()
            raise
        return DeployResult(
            self.name, self.host, self.app_dir, self.health_url, health, list(self._steps), time.monotonic() - started
        )

    async def app_env(self) -> dict[str, str]:
        """The variables of the env file, parsed here in Python (never sourced by a shell): what deploy wrote, or
        the file on the target when this runtime did not write it (a `start` after `sync`)."""
        if self._env is None:
            try:
                text = await self.transport.read_text(self.env_path)
            except (TransportError, OSError) as exc:
                raise DeployError("env", f"reading {self.env_path} on {self.host}: {exc}") from None
            self._env = parse_env_text(text, where=f"{self.env_path} on {self.host}")
            self._secrets = env_secrets(text)
        return {**self.python_env, **self._env}

    async def migrate_db(self) -> None:
        await self._run(
            "migrate",
            self.migrate_command(),
            env=await self.app_env(),
            hint=f"check DATABASE_URL in the env file: the database must be reachable from {self.host}",
        )

    async def _stop_step(self) -> str:
        return await self._run("stop", self.stop_command(), timeout=self.stop_timeout + 30)

    async def _start_step(self) -> str:
        return await self._run(
            "start",
            self.start_command(),
            env=await self.app_env(),
            timeout=60,
            hint=f"see {self.log_path} on the target",
        )

    async def _stop_quietly(self) -> None:
        try:
            await asyncio.shield(self._run("stop", self.stop_command(), timeout=self.stop_timeout + 30))
        except Exception:  # the original error is the one to report
            return

    async def _alive(self) -> str | None:
        state = await self.status()
        if state.startswith("running"):
            return None
        log = await self.transport.run(
            f"tail -n 5 {shlex.quote(self.log_path)} 2>/dev/null", timeout=30, check=False, secrets=self._secrets
        )
        return f"the server process exited ({state.strip()}); last lines of {self.log_path}: {stderr_tail(log.stdout) or '(empty)'}"

    async def stop(self) -> None:
        await self._stop_step()

    async def start(self) -> None:
        await self._start_step()

    async def status(self) -> str:
        return (await self._run("status", self.status_command(), timeout=30)).strip()

    async def own_uploads(self, directory: str) -> None:
        """The process runs as the SSH user, who copied the files: nothing to change."""

    def start_plan(self) -> str:
        return "timetodo db upgrade; timetodo serve (detached)"

    async def prepare_host(self, uploads_dir: str, ssh_port: int) -> dict[str, Any]:
        """No container engine: the app and upload directories are all it needs."""
        await self.transport.run(["mkdir", "-p", self.app_dir, uploads_dir], timeout=60)
        return {"runtime": "process", "note": "no container engine: app directory ensured only"}

    def prepare_plan(self) -> str:
        return f"mkdir -p {self.app_dir}"
