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
import io
import json
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from dotenv.parser import parse_stream

from timetodo.ops.adapters.transport import CommandFailed, Transport, TransportError
from timetodo.ops.errors import OpsError
from timetodo.ops.migrate.prepare.host import PrepareResult

HEALTH_PATH = "/health/detailed"
PROBE_TIMEOUT = 5.0
POLL_INTERVAL = 0.5
DEFAULT_HEALTH_TIMEOUT = 120.0

_SECRET_KEY_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENV_HINT = "write NAME=VALUE, one a line; put a value with spaces or # in 'single quotes' (kept literally)"
HOST_RE = re.compile(r"^[A-Za-z0-9.:-]+$")

# One urllib request, printed as "<body>\n<status>" (status 0 when there was no HTTP answer), like curl -w below.
PROBE_PY = """import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))
    code, body = r.status, r.read().decode("utf-8", "replace")
except urllib.error.HTTPError as e:
    code, body = e.code, e.read().decode("utf-8", "replace")
except Exception as e:
    code, body = 0, f"{type(e).__name__}: {e}"
sys.stdout.write(body + "\\n" + str(code) + "\\n")
"""

# The same over TLS, connecting to 127.0.0.1 but verifying the certificate for the public name (argv: name, port,
# path, timeout, CA file or ""): what a client of https://NAME sees once DNS points at this host.
PROBE_TLS_PY = """import http.client, socket, ssl, sys
name, port, path, timeout, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
try:
    ctx = ssl.create_default_context(cafile=cafile or None)
    class Local(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection(("127.0.0.1", port), timeout)
            self.sock = ctx.wrap_socket(raw, server_hostname=name)
    conn = Local(name, port, timeout=timeout, context=ctx)
    conn.request("GET", path)
    r = conn.getresponse()
    code, body = r.status, r.read().decode("utf-8", "replace")
except Exception as e:
    code, body = 0, f"{type(e).__name__}: {e}"
sys.stdout.write(body + "\\n" + str(code) + "\\n")
"""


# --------------------------------------------------------------------------------------------------------- results


class DeployError(OpsError):
    """A deploy step failed on the target. `step` names it, `hint` says what to do."""

    def __init__(self, step: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"deploy step '{step}' failed: {message}", hint)
        self.step = step
        self.message = message


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
    image: dict[str, Any] = field(default_factory=dict)
    """compose runtime: where the image came from, its tag and id, and the previous deployment's (image.py)."""

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
            # "image" one line (the final report's target side shows it), "image_record" every field
            **({"image": image_label(self.image), "image_record": self.image} if self.image else {}),
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

    async def own_uploads(self, directory: str) -> None:
        """Give the uploads copied into `directory` to the user the app runs as."""
        ...

    def start_plan(self) -> str:
        """How `deploy` starts the app, in one line for `migrate plan`."""
        ...

    async def prepare_host(self, uploads_dir: str, ssh_port: int) -> PrepareResult | dict[str, Any]:
        """Make the host ready for this runtime (idempotent): what `migrate prepare` does."""
        ...

    def prepare_plan(self) -> str:
        """What `prepare_host` runs, in one line for `migrate plan`."""
        ...


# --------------------------------------------------------------------------------------------------------- helpers


def image_label(image: dict[str, Any]) -> str:
    """`tag (sha256:0123456789ab)` of a deployed image record."""
    tag, image_id = str(image.get("tag", "")), str(image.get("id", ""))
    short = image_id.split(":", 1)[-1][:12]
    return f"{tag} (sha256:{short})" if short else tag


class EnvFileError(OpsError):
    """The env file has a line that is not `KEY=VALUE` under dotenv rules; the message names the line, not its
    content (it may hold a secret)."""


def parse_env_text(text: str, *, where: str = "the env file") -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file, read by python-dotenv's parser without interpolation: comments, blank lines
    and `export` allowed; 'single quotes' literal, "double quotes" with backslash escapes; a `$`, a backtick or
    `$(...)` in a value is kept as written (nothing is run, nothing expanded). A line the parser cannot read, a key
    without `=`, or a name that is not a shell variable name raises `EnvFileError` naming the line."""
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise EnvFileError(f"{where}, line {line}: not a KEY=VALUE line", _ENV_HINT)
        if binding.key is None:  # blank or comment
            continue
        if binding.value is None or not _ENV_NAME.match(binding.key):
            raise EnvFileError(f"{where}, line {line}: {binding.key!r} is not NAME=VALUE", _ENV_HINT)
        values[binding.key] = binding.value
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


def stderr_tail(text: str, lines: int = 6) -> str:
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
        return _Probe(0, stderr_tail(stderr) or stderr_tail(stdout) or "no answer")
    body = "\n".join(lines[:-1])
    if code == 0:
        body = body.strip() or stderr_tail(stderr) or "no answer"
    return _Probe(code, body)


class RuntimeBase:
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
            detail = stderr_tail(exc.result.stderr) or stderr_tail(exc.result.stdout) or "no output"
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
