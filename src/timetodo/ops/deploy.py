"""`timetodo migrate deploy`: start the app on the target host and wait until `/health/detailed` is green.

Two runtimes behind one interface (`Runtime`), both driven through a `Transport` (SSH to the VPS, or local):

- `ComposeRuntime`: the compose bundle (`deploy/docker-compose.yml` + `deploy/nginx/`) and the env file (mode 0600)
  uploaded into the app directory, then `docker compose ... up -d --wait` (the bundle's one-shot `migrate` service
  applies the migrations before any app instance starts), then `curl http://127.0.0.1/health/detailed` on the
  target (through nginx) until it answers 200.
- `ProcessRuntime`: no container engine. The app runs as a process from a virtualenv on the target: `.env` written
  (0600), `timetodo db upgrade` with that env, `timetodo serve --no-migrate` started detached in its own session
  (pid file `APP/timetodo.pid`, log `APP/logs/serve.log`), health polled on the target. Deploying again restarts
  it: there is only ever one instance. `stop` sends SIGTERM and waits for the graceful exit.

Secrets: the env text only travels as file content (SFTP, or a local file), never on a command line; its secret
values (keys named *PASSWORD*, *SECRET*, *TOKEN*, *KEY*, and URL passwords) are masked in the transport's logs.

A failing step raises `DeployError` naming the step (`upload`, `env`, `config`, `up`, `migrate`, `stop`, `start`,
`health`) with the remote error and a hint. A failure after this deploy started the process stops it again, so a
failed deploy leaves nothing of its own running.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from timetodo.ops.ssh import CommandFailed, Transport, TransportError

HEALTH_PATH = "/health/detailed"
PROBE_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
DEFAULT_HEALTH_TIMEOUT = 120.0

_SECRET_KEY_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_HOST = re.compile(r"^[A-Za-z0-9.:-]+$")

# One urllib request, printed as "<body>\n<status>" (status 0 when there was no HTTP answer), like curl -w below.
_PROBE_PY = """import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))
    code, body = r.status, r.read().decode("utf-8", "replace")
except urllib.error.HTTPError as e:
    code, body = e.code, e.read().decode("utf-8", "replace")
except Exception as e:
    code, body = 0, f"{type(e).__name__}: {e}"
sys.stdout.write(body + "\\n" + str(code) + "\\n")
"""


# --------------------------------------------------------------------------------------------------------- results


class DeployError(Exception):
    """A deploy step failed on the target. `step` names it, `hint` says what to do."""

    def __init__(self, step: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"deploy step '{step}' failed: {message}")
        self.step = step
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class PlannedCommand:
    """One thing deploy would do (for --dry-run): a shell command, or a file operation described in words."""

    host: str
    command: str

    def __str__(self) -> str:
        return f"[{self.host}] {self.command}"


@dataclass(frozen=True)
class DeployStep:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class DeployResult:
    runtime: str
    host: str
    app_dir: str
    health_url: str
    health: dict[str, Any] = field(default_factory=dict)
    steps: list[DeployStep] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.health.get("status") == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "host": self.host,
            "app_dir": self.app_dir,
            "health_url": self.health_url,
            "healthy": self.healthy,
            "health": self.health,
            "seconds": round(self.seconds, 3),
            "steps": [{"name": s.name, "seconds": round(s.seconds, 3), "detail": s.detail} for s in self.steps],
        }


@runtime_checkable
class Runtime(Protocol):
    """How the app runs on the target. Every method acts on the target through the runtime's transport."""

    name: str

    async def plan(self) -> list[PlannedCommand]:
        """Every command `deploy` would run, on which host (changes nothing)."""
        ...

    async def deploy(self, env_text: str) -> DeployResult:
        """Ship the app and `env_text` (the .env, mode 0600), migrate, (re)start, wait for green health."""
        ...

    async def migrate_db(self) -> None: ...

    async def wait_healthy(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - a polling deadline
        """Poll `/health/detailed` on the target until 200; returns its JSON body. DeployError('health') else."""
        ...

    async def stop(self) -> None: ...

    async def start(self) -> None: ...

    async def status(self) -> str: ...


# --------------------------------------------------------------------------------------------------------- helpers


def parse_env_text(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv / shell env file (comments, blank lines and `export` allowed; quotes removed)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            continue
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def env_secrets(text: str) -> list[str]:
    """The secret values of an env file, for masking: values of secret-looking keys and passwords inside URLs."""
    found: list[str] = []
    for name, value in parse_env_text(text).items():
        if len(value) < 4:
            continue
        if _SECRET_KEY_NAME.search(name):
            found.append(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)
                found.append(value)
    return found


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def _failing_checks(body: str) -> str:
    """`database: OperationalError ...; migrations` from a /health/detailed body, or the body's start."""
    try:
        report = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    checks = report.get("checks") if isinstance(report, dict) else None
    if not isinstance(checks, dict):
        return body.strip()[:300]
    failing = []
    for name, check in checks.items():
        if isinstance(check, dict) and not check.get("ok", True):
            error = check.get("error")
            failing.append(f"{name}: {error}" if error else name)
    return "failing checks: " + "; ".join(failing) if failing else body.strip()[:300]


@dataclass(frozen=True)
class _Probe:
    code: int
    body: str


def _parse_probe(stdout: str, stderr: str) -> _Probe:
    lines = stdout.rstrip("\n").split("\n")
    try:
        code = int(lines[-1].strip())
    except ValueError:
        return _Probe(0, _tail(stderr) or _tail(stdout) or "no answer")
    body = "\n".join(lines[:-1])
    if code == 0:
        body = body.strip() or _tail(stderr) or "no answer"
    return _Probe(code, body)


class _Base:
    """Shared: command running with masking, step timing, the health poll loop."""

    name = "base"
    health_url = ""

    def __init__(self, transport: Transport, app_dir: str, *, command_timeout: float) -> None:
        if not app_dir.startswith("/"):
            raise ValueError(f"app_dir must be an absolute path on the target (got {app_dir!r})")
        self.transport = transport
        self.app_dir = app_dir.rstrip("/") or "/"
        self.command_timeout = command_timeout
        self._secrets: list[str] = []
        self._steps: list[DeployStep] = []
        self.env_path = self._path(".env")

    @property
    def host(self) -> str:
        return self.transport.describe()

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.app_dir, *parts)

    async def _run(
        self,
        step: str,
        command: str | list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the remote command's deadline
        env: dict[str, str] | None = None,
        hint: str = "",
    ) -> str:
        try:
            result = await self.transport.run(
                command, timeout=timeout or self.command_timeout, env=env, secrets=self._secrets
            )
        except CommandFailed as exc:
            detail = _tail(exc.result.stderr) or _tail(exc.result.stdout) or "no output"
            raise DeployError(
                step,
                f"`{exc.command}` exited {exc.exit_status} on {self.host}: {detail}",
                hint=hint or exc.hint,
            ) from None
        except TransportError as exc:
            raise DeployError(step, f"{exc.message}", hint=exc.hint) from None
        return result.stdout

    async def _timed(self, name: str, coro: Any) -> Any:
        started = time.monotonic()
        value = await coro
        detail = value if isinstance(value, str) else ""
        self._steps.append(DeployStep(name, time.monotonic() - started, detail.strip()[:200]))
        return value

    def _probe_command(self) -> str:
        raise NotImplementedError

    async def _probe(self) -> _Probe:
        result = await self.transport.run(self._probe_command(), timeout=PROBE_TIMEOUT + 10, check=False)
        return _parse_probe(result.stdout, result.stderr)

    async def _alive(self) -> str | None:
        """None while the app can still come up; else why it never will (ProcessRuntime: the process died)."""
        return None

    async def _write_env(self, env_text: str) -> str:
        try:
            await self.transport.write_text(self.env_path, env_text, mode=0o600)
        except (TransportError, OSError) as exc:
            raise DeployError("env", f"writing {self.env_path} on {self.host}: {exc}") from None
        return f"{self.env_path} (0600)"

    async def wait_healthy(self, timeout: float = DEFAULT_HEALTH_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        last = _Probe(0, "no answer yet")
        while True:
            try:
                last = await self._probe()
            except TransportError as exc:
                raise DeployError("health", exc.message, hint=exc.hint) from None
            if last.code == 200:
                try:
                    report = json.loads(last.body)
                except ValueError:
                    report = {"status": "ok", "body": last.body[:500]}
                return report if isinstance(report, dict) else {"status": "ok", "body": report}
            dead = await self._alive()
            if dead is not None:
                raise DeployError(
                    "start", dead, hint="read the log named above on the target, fix the cause, deploy again"
                )
            if time.monotonic() >= deadline:
                answer = f"HTTP {last.code}" if last.code else "no HTTP answer"
                raise DeployError(
                    "health",
                    f"{self.health_url} on {self.host} not healthy within {timeout:g}s ({answer}: {_failing_checks(last.body)})",
                    hint="see the failing checks above; `timetodo migrate status` shows the runtime's state",
                )
            await asyncio.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------------------------------------- compose


class ComposeRuntime(_Base):
    """The compose bundle under Docker on the target (Compose v2 plugin: `docker compose`)."""

    name = "compose"

    def __init__(
        self,
        transport: Transport,
        app_dir: str,
        bundle_dir: Path = Path("deploy"),
        project: str = "timetodo",
        *,
        http_port: int | None = None,
        command_timeout: float = 900.0,
    ) -> None:
        super().__init__(transport, app_dir, command_timeout=command_timeout)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
            raise ValueError(
                f"project must be a compose project name (lowercase letters, digits, - and _), got {project!r}"
            )
        self.bundle_dir = Path(bundle_dir)
        self.project = project
        self.http_port = http_port
        self.compose_file = self._path("docker-compose.yml")
        self._set_health_url(http_port or 80)

    def _set_health_url(self, port: int) -> None:
        self.health_url = f"http://127.0.0.1{'' if port == 80 else f':{port}'}{HEALTH_PATH}"

    def compose(self, *args: str) -> list[str]:
        """`docker compose -p PROJECT -f APP/docker-compose.yml --env-file APP/.env ARGS...`"""
        return ["docker", "compose", "-p", self.project, "-f", self.compose_file, "--env-file", self.env_path, *args]

    def bundle_files(self) -> list[tuple[Path, str]]:
        """(local file, remote path) of the bundle: docker-compose.yml and everything under nginx/."""
        compose = self.bundle_dir / "docker-compose.yml"
        if not compose.is_file():
            raise DeployError(
                "upload",
                f"the compose bundle is missing: {compose} not found",
                hint="run from the repository root or point bundle_dir at the folder with docker-compose.yml",
            )
        files = [(compose, self.compose_file)]
        nginx = self.bundle_dir / "nginx"
        if nginx.is_dir():
            for path in sorted(p for p in nginx.rglob("*") if p.is_file()):
                files.append((path, self._path(*path.relative_to(self.bundle_dir).parts)))
        return files

    def _probe_command(self) -> str:
        url = shlex.quote(self.health_url)
        py = shlex.quote(_PROBE_PY)
        return (
            "if command -v curl >/dev/null 2>&1; then "
            f"curl -sS --max-time {PROBE_TIMEOUT:g} -w '\\n%{{http_code}}\\n' {url}; "
            f"else python3 -c {py} {url} {PROBE_TIMEOUT:g}; fi"
        )

    async def plan(self) -> list[PlannedCommand]:
        host = self.host
        planned = [
            PlannedCommand(host, f"upload {local} -> {remote} (mode 0644)") for local, remote in self.bundle_files()
        ]
        planned.append(PlannedCommand(host, f"write {self.env_path} (mode 0600) from the env file, contents not shown"))
        planned.append(PlannedCommand(host, shlex.join(self.compose("config", "--quiet"))))
        planned.append(PlannedCommand(host, shlex.join(self.compose("up", "-d", "--wait"))))
        planned.append(PlannedCommand(host, f"poll until HTTP 200: {self._probe_command()}"))
        return planned

    async def deploy(self, env_text: str, *, health_timeout: float = DEFAULT_HEALTH_TIMEOUT) -> DeployResult:
        started = time.monotonic()
        self._steps = []
        self._secrets = env_secrets(env_text)
        if self.http_port is None:
            port = parse_env_text(env_text).get("HTTP_PORT", "80")
            self._set_health_url(int(port) if port.isdigit() else 80)
        await self._timed("upload", self._upload())
        await self._timed("env", self._write_env(env_text))
        await self._timed(
            "config",
            self._run(
                "config",
                self.compose("config", "--quiet"),
                hint=f"fix the variable named above in the env file ({self.env_path}) and deploy again",
            ),
        )
        await self._timed(
            "up",
            self._run(
                "up",
                self.compose("up", "-d", "--wait"),
                hint=f"look at `{shlex.join(self.compose('ps', '--all'))}` and `... logs` on the target",
            ),
        )
        health = await self._timed("health", self.wait_healthy(health_timeout))
        return DeployResult(
            self.name, self.host, self.app_dir, self.health_url, health, list(self._steps), time.monotonic() - started
        )

    async def _upload(self) -> str:
        files = self.bundle_files()
        for local, remote in files:
            try:
                await self.transport.put_file(local, remote, mode=0o644)
            except (TransportError, OSError) as exc:
                raise DeployError("upload", f"uploading {local} to {remote} on {self.host}: {exc}") from None
        return f"{len(files)} files"

    async def migrate_db(self) -> None:
        """Run the bundle's one-shot `migrate` service again (deploy's `up` already runs it first)."""
        await self._run(
            "migrate", self.compose("run", "--rm", "migrate"), hint="check DATABASE_URL / the postgres service"
        )

    async def stop(self) -> None:
        await self._run("stop", self.compose("stop", "app"))

    async def start(self) -> None:
        await self._run("start", self.compose("start", "app"))

    async def status(self) -> str:
        return await self._run("status", self.compose("ps"), timeout=60)


# --------------------------------------------------------------------------------------------------------- process

# Shell functions shared by the process scripts. `alive PID`: the process exists, is not a zombie (PID 1 may not
# reap it) and is a `timetodo serve`.
_ALIVE = r"""alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- ' serve --host '
}"""


class ProcessRuntime(_Base):
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
        if not _HOST.match(host):
            raise ValueError(f"host must be an address (got {host!r})")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {port})")
        self.timetodo_bin = timetodo_bin
        self.python = posixpath.join(posixpath.dirname(timetodo_bin), "python")
        self.listen_host = host
        self.port = port
        self.python_env = dict(python_env or {})
        self.stop_timeout = stop_timeout
        self.pid_path = self._path("timetodo.pid")
        self.log_path = self._path("logs", "serve.log")
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        probe_host = f"[{probe_host}]" if ":" in probe_host else probe_host
        self.health_url = f"http://{probe_host}:{port}{HEALTH_PATH}"

    # ---- commands (as shell text; only paths and options, never a secret)

    def _with_env(self, *argv: str) -> str:
        q = shlex.quote
        return f"cd {q(self.app_dir)} && set -a && . {q(self.env_path)} && set +a && exec {shlex.join(argv)}"

    def migrate_command(self) -> str:
        return self._with_env(self.timetodo_bin, "db", "upgrade")

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
                f"set -a && . {q(self.env_path)} && set +a || exit 1",
                f"setsid sh -c {q(inner)} >>{q(self.log_path)} 2>&1 </dev/null &",
                "i=0",
                f'while [ ! -s {q(self.pid_path)} ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done',
                f'[ -s {q(self.pid_path)} ] || {{ echo "the server did not start, see {self.log_path}" >&2; exit 1; }}',
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
            f'"$py" -c {q(_PROBE_PY)} {q(self.health_url)} {PROBE_TIMEOUT:g}'
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

    async def migrate_db(self) -> None:
        await self._run(
            "migrate",
            self.migrate_command(),
            env=self.python_env or None,
            hint=f"check DATABASE_URL in the env file: the database must be reachable from {self.host}",
        )

    async def _stop_step(self) -> str:
        return await self._run("stop", self.stop_command(), timeout=self.stop_timeout + 30)

    async def _start_step(self) -> str:
        return await self._run(
            "start",
            self.start_command(),
            env=self.python_env or None,
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
        return f"the server process exited ({state.strip()}); last lines of {self.log_path}: {_tail(log.stdout) or '(empty)'}"

    async def stop(self) -> None:
        await self._stop_step()

    async def start(self) -> None:
        await self._start_step()

    async def status(self) -> str:
        return (await self._run("status", self.status_command(), timeout=30)).strip()
