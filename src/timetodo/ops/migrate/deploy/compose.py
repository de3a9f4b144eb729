"""`ComposeRuntime`: the compose bundle under Docker on the target (see `deploy.runtime` for what every runtime guarantees).

The app's image gets there as `image.py` describes (built on the target from a shipped build context by default);
`rollback_image()` puts the previous deployment's image back (the data untouched).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from timetodo.ops.adapters.acme import Acme, AcmeError, install_renewal, obtain
from timetodo.ops.adapters.nginx import render_nginx_config
from timetodo.ops.adapters.transport import Transport, TransportError
from timetodo.ops.migrate.deploy.image import (
    DeployedImage,
    ImageSource,
    build_context,
    chunks,
    parse_record,
    with_image,
)
from timetodo.ops.migrate.deploy.runtime import (
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_PATH,
    PROBE_PY,
    PROBE_TIMEOUT,
    PROBE_TLS_PY,
    DeployError,
    DeployResult,
    DeployStep,
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
        image_source: ImageSource = "build",
        image: str | None = None,
        context_dir: Path | None = None,
        docker: str = "docker",
        local_docker: str = "docker",
        build_timeout: float = 1800.0,
        probe_ca_file: str | None = None,
        acme: Acme | None = None,
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
        if image_source in ("load", "pull") and not image:
            raise ValueError(f"image_source {image_source!r} needs the image's name (target.image)")
        self.image_source: ImageSource = image_source
        self.image = image
        self.context_dir = Path(context_dir) if context_dir is not None else self.bundle_dir.resolve().parent
        self.docker = docker
        self.local_docker = local_docker
        self.build_timeout = build_timeout
        self.image_record = self._path(".image.json")
        self.deployed: DeployedImage | None = None
        self.probe_ca_file = probe_ca_file
        self.tls_name: str | None = None
        self.https_port = 443
        self.acme = acme
        self.nginx_conf = self._path("nginx", "timetodo.conf")
        self.certificate: dict[str, str] = {}
        self._set_health_url(http_port or 80)

    def _set_health_url(self, port: int) -> None:
        self.health_url = f"http://127.0.0.1{'' if port == 80 else f':{port}'}{HEALTH_PATH}"

    def compose(self, *args: str) -> list[str]:
        """`docker compose -p PROJECT -f APP/docker-compose.yml --env-file APP/.env ARGS...` (`docker-compose ...`
        once deploy found only Compose v1 on the host: Debian 12's own packages, `prepare.docker = "distro"`)."""
        command = ["docker-compose"] if self.compose_v1 else [self.docker, "compose"]
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

    def nginx_serves_tls(self) -> bool:
        """nginx terminates TLS: deploy obtains the certificate (`acme`), or the bundle's configuration was rendered
        with --tls-cert. Port 80 then only redirects (and answers ACME challenges)."""
        if self.acme is not None:
            return True
        conf = self.bundle_dir / "nginx" / "timetodo.conf"
        return conf.is_file() and "ssl_certificate " in conf.read_text()

    def configure_probe(self, env_text: str) -> None:
        """Where the health probe asks, from the env file: with TLS in the bundle's nginx, `https://NAME/…` (NAME from
        PUBLIC_BASE_URL, port HTTPS_PORT) connected to 127.0.0.1 with the certificate verified for NAME, since port
        80 only redirects; else `http://127.0.0.1[:HTTP_PORT]/…`."""
        env = parse_env_text(env_text)
        self.tls_name = None
        if self.nginx_serves_tls():
            public = urlsplit(env.get("PUBLIC_BASE_URL", ""))
            if self.acme is not None:  # the name deploy obtains the certificate for
                public = urlsplit(f"https://{self.acme.domains[0]}")
            if public.scheme != "https" or not public.hostname:
                raise DeployError(
                    "config",
                    "the bundle's nginx serves TLS, but PUBLIC_BASE_URL in the env file is not https://NAME",
                    hint="set PUBLIC_BASE_URL=https://<the certificate's name> in the env file",
                )
            port = env.get("HTTPS_PORT", "443")
            self.tls_name, self.https_port = public.hostname, int(port) if port.isdigit() else 443
            suffix = "" if self.https_port == 443 else f":{self.https_port}"
            self.health_url = f"https://{self.tls_name}{suffix}{HEALTH_PATH}"
        elif self.http_port is None:
            port = env.get("HTTP_PORT", "80")
            self._set_health_url(int(port) if port.isdigit() else 80)

    def _probe_command(self) -> str:
        url = shlex.quote(self.health_url)
        if self.tls_name is not None:
            name, port = self.tls_name, self.https_port
            ca = f" --cacert {shlex.quote(self.probe_ca_file)}" if self.probe_ca_file else ""
            args = f"{shlex.quote(name)} {port} {HEALTH_PATH} {PROBE_TIMEOUT:g} {shlex.quote(self.probe_ca_file or '')}"
            return (
                "if command -v curl >/dev/null 2>&1; then "
                f"curl -sS --max-time {PROBE_TIMEOUT:g}{ca} --resolve {shlex.quote(f'{name}:{port}:127.0.0.1')} "
                f"-w '\\n%{{http_code}}\\n' {url}; "
                f"else python3 -c {shlex.quote(PROBE_TLS_PY)} {args}; fi"
            )
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
        planned.append(PlannedCommand(host, self._image_plan()))
        planned.append(PlannedCommand(host, f"write {self.env_path} (mode 0600) from the env file, contents not shown"))
        planned.append(PlannedCommand(host, shlex.join(self.compose("config", "--quiet"))))
        planned.append(PlannedCommand(host, shlex.join(self.compose("up", "-d", "--wait"))))
        if self.acme is not None:
            planned.append(PlannedCommand(host, shlex.join(self.acme.certonly_command())))
            planned.append(
                PlannedCommand(host, f"nginx on TLS: {shlex.join(self.reload_nginx_command())}; renewal deploy hook")
            )
        planned.append(PlannedCommand(host, f"poll until HTTP 200: {self._probe_command()}"))
        return planned

    async def deploy(self, env_text: str, *, health_timeout: float = DEFAULT_HEALTH_TIMEOUT) -> DeployResult:
        started = time.monotonic()
        self._steps = []
        self._secrets = env_secrets(env_text)
        self.configure_probe(env_text)
        await self._timed("upload", self._upload())
        image = await self._timed_image()
        have_certificate = await self._has_certificate()
        if self.acme is not None:
            # no certificate yet: nginx starts on plain HTTP (which answers the challenge), TLS once it is there
            await self._timed("nginx", self._write_nginx(env_text, tls=have_certificate))
        await self._timed("env", self._write_env(self._env_for(env_text, image.tag)))
        await self._timed("config", self._config())
        await self._timed(
            "up",
            self._run(
                "up",
                self.compose(*self._up_args()),
                hint=f"look at `{shlex.join(self.compose('ps', '--all'))}` and `... logs` on the target",
            ),
        )
        if self.acme is not None:
            tls_url, name = self.health_url, self.tls_name
            if not have_certificate:
                self._set_health_url(self._http_port(env_text))
                self.tls_name = None
                await self._timed("health-http", self.wait_healthy(health_timeout))
            await self._timed("certificate", self._certificate(env_text, switch=not have_certificate))
            if have_certificate or self.certificate.get("status") == "valid":
                self.tls_name, self.health_url = name, tls_url
        health = await self._timed("health", self.wait_healthy(health_timeout))
        await self._write_record(image)
        return DeployResult(
            self.name,
            self.host,
            self.app_dir,
            self.health_url,
            health,
            list(self._steps),
            time.monotonic() - started,
            {**image.to_dict(), **({"certificate": self.certificate} if self.certificate else {})},
        )

    # ----------------------------------------------------------------------------------------------------------- TLS

    @staticmethod
    def _http_port(env_text: str) -> int:
        port = parse_env_text(env_text).get("HTTP_PORT", "80")
        return int(port) if port.isdigit() else 80

    def _env_for(self, env_text: str, tag: str) -> str:
        text = with_image(env_text, tag)
        if self.acme is not None:  # nginx reads the certificates where certbot keeps them (live/ links to archive/)
            text = (
                "\n".join(line for line in text.splitlines() if not line.strip().startswith("LETSENCRYPT_DIR="))
                + f"\nLETSENCRYPT_DIR={self.acme.config_dir}\n"
            )
        return text

    async def _has_certificate(self) -> bool:
        if self.acme is None:
            return False
        result = await self.transport.run(["test", "-s", self.acme.certificate], timeout=30, check=False)
        return result.exit_status == 0

    def nginx_config(self, env_text: str, *, tls: bool) -> str:
        """The compose nginx's configuration: the bundle's choices (upstream app:8000, Docker's resolver), the
        public name, MAX_UPLOAD_MB, and the certificate paths as the container sees them (LETSENCRYPT_DIR is
        mounted at the same path) when `tls`."""
        assert self.acme is not None
        upload = parse_env_text(env_text).get("MAX_UPLOAD_MB", "25")
        return render_nginx_config(
            upstreams=["app:8000"],
            listen_port=80,
            server_name=self.acme.domains[0],
            max_upload_mb=int(upload) if upload.isdigit() else 25,
            resolver="127.0.0.11",
            tls_certificate=self.acme.certificate if tls else None,
            tls_certificate_key=self.acme.private_key if tls else None,
        )

    async def _write_nginx(self, env_text: str, *, tls: bool) -> str:
        try:
            await self.transport.write_text(self.nginx_conf, self.nginx_config(env_text, tls=tls), mode=0o644)
        except (TransportError, OSError) as exc:
            raise DeployError("nginx", f"writing {self.nginx_conf} on {self.host}: {exc}") from None
        return f"{self.nginx_conf} ({'TLS' if tls else 'plain HTTP until the certificate is there'})"

    def reload_nginx_command(self) -> list[str]:
        return self.compose("exec", "-T", "nginx", "nginx", "-s", "reload")

    async def _certificate(self, env_text: str, *, switch: bool) -> str:
        """certbot on the host (HTTP-01 through the running nginx; a valid certificate is kept), then nginx on
        TLS when it was on plain HTTP, and the renewal: certbot's deploy hook reloads nginx."""
        assert self.acme is not None
        try:
            certificate = await obtain(self.transport, self.acme)
        except AcmeError as exc:
            # Before the DNS switch of a migration the name still points at the old host, so HTTP-01 cannot pass
            # yet: the app runs (on plain HTTP when there was no certificate), and the result says what to do.
            self.certificate = {
                "status": "pending",
                "error": exc.message,
                "hint": f"{exc.hint}; then run `timetodo migrate deploy` again (after the DNS switch)",
            }
            return f"pending: {exc.message}"
        except TransportError as exc:
            raise DeployError("certificate", exc.message, hint=exc.hint) from None
        if switch:
            await self._write_nginx(env_text, tls=True)
            await self._run(
                "certificate", self.reload_nginx_command(), hint="`docker compose logs nginx` on the target"
            )
        scheduler = await install_renewal(self.transport, self.acme, shlex.join(self.reload_nginx_command()))
        self.certificate = {
            "status": "valid",
            "path": certificate.path,
            "serial": certificate.serial,
            "not_after": certificate.not_after,
            "renewal": scheduler,
        }
        return f"{certificate.path} until {certificate.not_after}; renewal: {scheduler}"

    # ------------------------------------------------------------------------------------------------- the image

    def _image_plan(self) -> str:
        if self.image_source == "pull":
            return shlex.join([self.docker, "pull", self.image or ""])
        if self.image_source == "load":
            return f"{self.local_docker} save {self.image} | (ssh) {self.docker} load"
        return (
            f"upload the build context of {self.context_dir} (Dockerfile, pyproject.toml, uv.lock, README.md, src/) "
            f"to {self._path('build')}/ and `{self.docker} build` it there, unless its tag is already there"
        )

    async def _timed_image(self) -> DeployedImage:
        started = time.monotonic()
        image = await self.ship_image()
        detail = f"{image.source}: {image.tag} {image.id[:19]}{' (built)' if image.built else ''}"
        self._steps.append(DeployStep("image", time.monotonic() - started, detail))
        return image

    async def _inspect(self, tag: str) -> str:
        """The image's id on the target, empty when it has no such image."""
        result = await self.transport.run(
            [self.docker, "image", "inspect", "--format", "{{.Id}}", tag], timeout=60, check=False
        )
        return result.stdout.strip() if result.exit_status == 0 else ""

    async def _record(self) -> dict[str, str]:
        try:
            return parse_record(await self.transport.read_text(self.image_record))
        except (FileNotFoundError, TransportError, OSError):
            return {}

    async def ship_image(self) -> DeployedImage:
        """Get the image onto the target by `image_source` (image.py); its tag, id and the previous deployment's."""
        if self.image_source == "build":
            image = await self._build_on_target()
        elif self.image_source == "pull":
            assert self.image is not None
            await self._run(
                "image",
                [self.docker, "pull", self.image],
                timeout=self.build_timeout,
                hint="check the image name and that the target can reach its registry (docker login)",
            )
            image = DeployedImage("pull", self.image)
        else:
            image = await self._load_on_target()
        image.id = await self._inspect(image.tag)
        if not image.id:
            raise DeployError("image", f"{image.tag} is not on {self.host} after the {image.source}")
        record = await self._record()
        if record.get("tag") and record.get("tag") != image.tag:
            image.previous_tag, image.previous_id = record["tag"], record.get("id", "")
        else:  # the same image again: the one before it stays the one to go back to
            image.previous_tag, image.previous_id = record.get("previous_tag", ""), record.get("previous_id", "")
        self.deployed = image
        return image

    async def _build_on_target(self) -> DeployedImage:
        try:
            context = build_context(self.context_dir)
        except FileNotFoundError as exc:
            raise DeployError(
                "image",
                f"no build context: {exc}",
                hint='run from the repository checkout, or set target.image_source = "pull" or "load"',
            ) from None
        tag = context.tag(self.project)
        if await self._inspect(tag):
            return DeployedImage("build", tag)
        build_dir = self._path("build")
        archive = f"{build_dir}/context-{context.sha256[:12]}.tar.gz"
        unpacked = f"{build_dir}/context-{context.sha256[:12]}"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "context.tar.gz"
            local.write_bytes(context.data)
            try:
                await self.transport.put_file(local, archive, mode=0o644)
            except (TransportError, OSError) as exc:
                raise DeployError("image", f"uploading the build context to {archive} on {self.host}: {exc}") from None
        await self._run("image", ["rm", "-rf", unpacked])
        await self._run("image", ["mkdir", "-p", unpacked])
        await self._run("image", ["tar", "-xzf", archive, "-C", unpacked])
        await self._run(
            "image",
            [self.docker, "build", "-t", tag, unpacked],
            timeout=self.build_timeout,
            hint="the build runs on the target: it needs Debian's and PyPI's mirrors (or a proxy) from there",
        )
        await self._run("image", ["rm", "-rf", unpacked, archive])
        return DeployedImage("build", tag, built=True)

    async def _load_on_target(self) -> DeployedImage:
        assert self.image is not None
        save = await asyncio.create_subprocess_exec(
            self.local_docker, "save", self.image, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert save.stdout is not None and save.stderr is not None
        try:
            result = await self.transport.stream(
                [self.docker, "load"], stdin_source=chunks(save.stdout), timeout=self.build_timeout, check=False
            )
        finally:
            if save.returncode is None:
                await save.wait()
        error = (await save.stderr.read()).decode(errors="replace").strip()
        if save.returncode != 0:
            raise DeployError(
                "image",
                f"`{self.local_docker} save {self.image}` here exited {save.returncode}: {error[-300:]}",
                hint="build or pull the image on this machine first",
            )
        if result.exit_status != 0:
            raise DeployError(
                "image", f"`docker load` on {self.host} exited {result.exit_status}: {result.stderr[-300:]}"
            )
        return DeployedImage("load", self.image)

    async def _write_record(self, image: DeployedImage) -> None:
        record = {k: v for k, v in image.to_dict().items() if k != "built"}
        await self.transport.write_text(self.image_record, json.dumps(record, indent=2) + "\n", mode=0o644)

    async def rollback_image(self, *, health_timeout: float = DEFAULT_HEALTH_TIMEOUT) -> DeployedImage:
        """Start the previous deployment's image again (APP/.image.json), the data as it is. Returns what runs now."""
        record = await self._record()
        previous = record.get("previous_tag", "")
        if not previous:
            raise DeployError("rollback", f"no previous image recorded in {self.image_record} on {self.host}")
        if not await self._inspect(previous):
            raise DeployError(
                "rollback", f"the previous image {previous} is no longer on {self.host}", hint="deploy it again"
            )
        try:
            env_text = await self.transport.read_text(self.env_path)
        except (FileNotFoundError, TransportError, OSError) as exc:
            raise DeployError("rollback", f"reading {self.env_path} on {self.host}: {exc}") from None
        self._secrets = env_secrets(env_text)
        self.configure_probe(env_text)
        if self.acme is not None and not await self._has_certificate():
            self._set_health_url(self._http_port(env_text))
            self.tls_name = None
        await self._write_env(with_image(env_text, previous))
        await self._config()
        await self._run("up", self.compose(*self._up_args()))
        await self.wait_healthy(health_timeout)
        image = DeployedImage(
            "rollback",
            previous,
            record.get("previous_id", ""),
            previous_tag=record.get("tag", ""),
            previous_id=record.get("id", ""),
        )
        await self._write_record(image)
        self.deployed = image
        return image

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
