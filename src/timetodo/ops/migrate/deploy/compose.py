"""`ComposeRuntime`: the compose bundle under Docker on the target (see `deploy.runtime` for what every runtime guarantees)."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Any

from timetodo.ops.adapters.transport import Transport, TransportError
from timetodo.ops.migrate.deploy.runtime import (
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_PATH,
    PROBE_PY,
    PROBE_TIMEOUT,
    DeployError,
    DeployResult,
    PlannedCommand,
    RuntimeBase,
    env_secrets,
    parse_env_text,
)
from timetodo.ops.migrate.prepare.host import PrepareResult, prepare_script, run_prepare

APP_UID = 10001
"""The user (and group) id the app image runs as."""


class ComposeRuntime(RuntimeBase):
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
        prepare_options: dict[str, Any] | None = None,
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
        self.prepare_options = dict(prepare_options or {})
        self.compose_v1 = False
        self._set_health_url(http_port or 80)

    def _set_health_url(self, port: int) -> None:
        self.health_url = f"http://127.0.0.1{'' if port == 80 else f':{port}'}{HEALTH_PATH}"

    def compose(self, *args: str) -> list[str]:
        """`docker compose -p PROJECT -f APP/docker-compose.yml --env-file APP/.env ARGS...` (`docker-compose ...`
        once deploy found only Compose v1 on the host: Debian 12's own packages, `prepare.docker = "distro"`)."""
        command = ["docker-compose"] if self.compose_v1 else ["docker", "compose"]
        return [*command, "-p", self.project, "-f", self.compose_file, "--env-file", self.env_path, *args]

    def _up_args(self) -> list[str]:
        # Compose v1 has no --wait: the health poll after `up` waits instead
        return ["up", "-d"] if self.compose_v1 else ["up", "-d", "--wait"]

    async def _config(self) -> str:
        hint = f"fix the variable named above in the env file ({self.env_path}) and deploy again"
        try:
            return await self._run("config", self.compose("config", "--quiet"), hint=hint)
        except DeployError as exc:
            if self.compose_v1 or "is not a docker command" not in exc.message:
                raise
        self.compose_v1 = True  # no v2 plugin on the host: its Compose v1, when there is one
        return await self._run("config", self.compose("config", "--quiet"), hint=hint)

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
        py = shlex.quote(PROBE_PY)
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
        await self._timed("config", self._config())
        await self._timed(
            "up",
            self._run(
                "up",
                self.compose(*self._up_args()),
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

    async def own_uploads(self, directory: str) -> None:
        # bound into the app containers (UPLOADS_PATH), which run as the image's user
        await self.transport.run(["chown", "-R", f"{APP_UID}:{APP_UID}", directory], timeout=600)

    def start_plan(self) -> str:
        return "docker compose up -d --wait"

    async def prepare_host(self, uploads_dir: str, ssh_port: int) -> PrepareResult:
        """Docker, the deploy user, SSH hardening, ufw, swap, fail2ban, unattended-upgrades (`prepare.sh`)."""
        script = prepare_script(app_dir=self.app_dir, ssh_port=ssh_port, **self.prepare_options)
        return await run_prepare(self.transport, script)

    def prepare_plan(self) -> str:
        return "bash -s < prepare script"
