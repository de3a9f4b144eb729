"""What every migration step works with: the configuration, secrets, state, transports, tunnels, the source's API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from timetodo.ops.config import MigrationConfig, Secrets
from timetodo.ops.migration.errors import EXIT_ERROR, EXIT_REFUSED, EXIT_UNREACHABLE, StepError
from timetodo.ops.migration.state import MigrationState
from timetodo.ops.ssh import LocalTransport, SSHTarget, SSHTransport, Transport

log = logging.getLogger("timetodo.ops.migrate")
LOGIN_RETRY_SECONDS = 90.0
ProgressUpdate = Callable[[int, int | None], None]


class SourceApi:
    """The source deployment's HTTP API as an admin: health and maintenance mode."""

    def __init__(self, base_url: str, *, email: str | None, password: str | None, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.email, self.password, self._token = email, password, token
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=30)

    async def _login(self) -> str:
        if not (self.email and self.password):
            raise StepError(
                "the source admin token was refused (expired or wrong)",
                "set admin_email + admin_password_env in migration.toml so the toolkit can log in again",
                EXIT_REFUSED,
            )
        deadline = time.monotonic() + LOGIN_RETRY_SECONDS
        while True:
            resp = await self.client.post(
                "/api/v1/auth/login", data={"username": self.email, "password": self.password}
            )
            if resp.status_code not in (429, 503) or time.monotonic() >= deadline:
                break
            # rate-limited (a resumed run logs in again) or briefly unavailable: wait as told, then try again
            wait = min(float(resp.headers.get("Retry-After", "5") or 5), max(0.0, deadline - time.monotonic()))
            log.info("source login deferred", extra={"status": resp.status_code, "wait_seconds": wait})
            await asyncio.sleep(max(wait, 0.5))
        if resp.status_code != 200:
            raise StepError(
                f"cannot log in to the source as {self.email}: HTTP {resp.status_code} {resp.text[:200]}",
                "check source.admin_email and the password variable named in source.admin_password_env",
                EXIT_REFUSED,
            )
        self._token = str(resp.json()["access_token"])
        return self._token

    async def token(self) -> str:
        return self._token or await self._login()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = await self.token()
        try:
            resp = await self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if resp.status_code == 401 and self.password:
                token = await self._login()
                resp = await self.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        except httpx.HTTPError as exc:
            raise StepError(
                f"source API {self.base_url} unreachable: {type(exc).__name__}: {exc}",
                "check source.api_url",
                EXIT_UNREACHABLE,
            ) from None
        return resp

    async def health(self) -> bool:
        try:
            return (await self.client.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def check_admin(self) -> dict[str, Any]:
        """Fails (before anything is frozen) when the credentials do not give admin rights on the source."""
        resp = await self.request("GET", "/api/v1/admin/maintenance")
        if resp.status_code in (401, 403):
            raise StepError(
                f"the source refuses the admin credentials (HTTP {resp.status_code})",
                "use an admin account (timetodo user create EMAIL --admin) and check the token/password variable",
                EXIT_REFUSED,
            )
        if resp.status_code != 200:
            raise StepError(f"GET /api/v1/admin/maintenance on the source answered {resp.status_code}", code=EXIT_ERROR)
        return dict(resp.json())

    async def maintenance(self, enabled: bool, reason: str = "") -> dict[str, Any]:
        resp = await self.request("PUT", "/api/v1/admin/maintenance", json={"enabled": enabled, "reason": reason})
        if resp.status_code != 200:
            raise StepError(
                f"switching maintenance {'on' if enabled else 'off'} on the source failed: HTTP {resp.status_code} "
                f"{resp.text[:200]}",
                code=EXIT_REFUSED if resp.status_code in (401, 403) else EXIT_ERROR,
            )
        log.info("source maintenance " + ("on" if enabled else "off"))
        return dict(resp.json())

    async def close(self) -> None:
        await self.client.aclose()


def _via(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@dataclass
class Context:
    config: MigrationConfig
    secrets: Secrets
    work_dir: Path
    state: MigrationState
    console: Console
    accept_new_host_key: bool = False
    config_dir: Path = Path(".")
    _target: Transport | None = None
    _source_files: Transport | None = None
    _source_api: SourceApi | None = None
    _runtime: Any = None
    _progress: Progress | None = None
    _activities: int = 0

    # hosts --------------------------------------------------------------------------------------------------------
    def target_ssh(self) -> SSHTarget:
        t = self.config.target
        return SSHTarget(
            host=t.host,
            port=t.port,
            user=t.user,
            key_file=t.key_file,
            known_hosts=t.known_hosts,
            accept_new_host_key=self.accept_new_host_key,
        )

    def source_files_ssh(self) -> SSHTarget | None:
        uploads = self.config.source.uploads
        if uploads is None or uploads.ssh is None:
            return None
        s = uploads.ssh
        return SSHTarget(
            host=s.host,
            port=s.port,
            user=s.user,
            key_file=s.key_file,
            known_hosts=s.known_hosts,
            accept_new_host_key=self.accept_new_host_key,
        )

    async def target(self) -> Transport:
        if self._target is None:
            self._target = SSHTransport(self.target_ssh())
        return self._target

    async def source_files(self) -> Transport:
        if self._source_files is None:
            ssh = self.source_files_ssh()
            self._source_files = SSHTransport(ssh) if ssh else LocalTransport()
        return self._source_files

    def source_api(self) -> SourceApi:
        if self._source_api is None:
            s = self.config.source
            self._source_api = SourceApi(
                s.api_url, email=s.admin_email, password=self.secrets.admin_password, token=self.secrets.admin_token
            )
        return self._source_api

    # databases ----------------------------------------------------------------------------------------------------
    async def target_db_url(self) -> str:
        """The target's database URL as reachable from here (through an SSH tunnel)."""
        host, port = _host_port(self.secrets.target_database_url, 5432)
        local_host, local_port = await (await self.target()).forward(host, port)
        return _via(self.secrets.target_database_url, local_host, local_port)

    async def target_redis_url(self) -> str | None:
        if not self.secrets.target_redis_url:
            return None
        host, port = _host_port(self.secrets.target_redis_url, 6379)
        local_host, local_port = await (await self.target()).forward(host, port)
        return _via(self.secrets.target_redis_url, local_host, local_port)

    async def snapshot_db_url(self) -> str:
        """`<target database>_cutover_snapshot` on the target's server: the source as it was when writes froze."""
        url = await self.target_db_url()
        name = urlsplit(url).path.lstrip("/") + "_cutover_snapshot"
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))

    # the app on the target ----------------------------------------------------------------------------------------
    async def runtime(self) -> Any:
        if self._runtime is None:
            from timetodo.ops import deploy

            t = self.config.target
            transport = await self.target()
            if t.runtime == "process":
                self._runtime = deploy.ProcessRuntime(
                    transport,
                    self.config.app_dir,
                    timetodo_bin=t.timetodo_bin or f"{self.config.app_dir}/venv/bin/timetodo",
                    host=t.app_host,
                    port=t.app_port,
                )
            else:
                bundle = t.bundle_dir if t.bundle_dir.is_absolute() else self.config_dir / t.bundle_dir
                self._runtime = deploy.ComposeRuntime(
                    transport, self.config.app_dir, bundle_dir=bundle, project=self.config.app_name
                )
        return self._runtime

    def telegram(self) -> Any:
        if self.config.telegram is None or not self.secrets.telegram_token:
            return None
        from timetodo.ops.telegram import TelegramClient

        return TelegramClient(self.secrets.telegram_token, api_base=self.config.telegram.api_base)

    def webhook_url(self, base: str) -> str:
        assert self.config.telegram is not None
        return base.rstrip("/") + self.config.telegram.webhook_path

    @contextlib.asynccontextmanager
    async def activity(self, description: str, total: int | None = None) -> AsyncIterator[ProgressUpdate]:
        """A Rich progress line while a long operation runs: a bar when the total is known (Redis keys), else a
        spinner with the elapsed time (dumps, restores, file syncs). Operations running side by side share one
        display (Rich allows one live display at a time)."""
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
        progress = self._progress
        if self._activities == 0:
            progress.start()
        self._activities += 1
        task = progress.add_task(description, total=total)

        def update(done: int, new_total: int | None = None) -> None:
            progress.update(task, completed=done, total=new_total if new_total is not None else total)

        try:
            yield update
            final = next(t for t in progress.tasks if t.id == task).total or 1
            progress.update(task, completed=final, total=final)
        finally:
            self._activities -= 1
            if self._activities == 0:
                progress.stop()
                self._progress = None

    async def close(self) -> None:
        for closer in (self._source_api, self._target, self._source_files):
            if closer is not None:
                try:
                    await closer.close()
                except Exception:
                    log.warning("closing failed", exc_info=True)
