"""What every migration step works with: the configuration, secrets, state, transports, tunnels, the source's API."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from timetodo.ops.adapters.transport import LocalTransport, SSHTarget, SSHTransport, Transport
from timetodo.ops.migrate.config import MigrationConfig, Secrets, SSHHost
from timetodo.ops.migrate.source_api import SourceApi
from timetodo.ops.migrate.state import MigrationState
from timetodo.ops.sources import database_name, host_port, via, with_database

if TYPE_CHECKING:
    from timetodo.ops.migrate.deploy.runtime import Runtime

log = logging.getLogger("timetodo.ops.migrate")
ProgressUpdate = Callable[[int, int | None], None]
PlanLine = tuple[str, str]
"""(host, command) of one line of `migrate plan`."""


@dataclass
class Context:
    config: MigrationConfig
    secrets: Secrets
    work_dir: Path
    state: MigrationState
    console: Console
    accept_new_host_key: bool = False
    _target: Transport | None = None
    _source_files: Transport | None = None
    _source_api: SourceApi | None = None
    _runtime: Runtime | None = None
    _progress: Progress | None = None
    _activities: int = 0

    # hosts --------------------------------------------------------------------------------------------------------
    def _ssh(self, host: SSHHost) -> SSHTarget:
        return SSHTarget(
            host=host.host,
            port=host.port,
            user=host.user,
            key_file=host.key_file,
            known_hosts=host.known_hosts,
            accept_new_host_key=self.accept_new_host_key,
        )

    def target_ssh(self) -> SSHTarget:
        return self._ssh(self.config.target)

    def source_files_ssh(self) -> SSHTarget | None:
        uploads = self.config.source.uploads
        return None if uploads is None or uploads.ssh is None else self._ssh(uploads.ssh)

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
                s.api_url,
                email=s.admin_email,
                password=self.secrets.admin_password,
                token=self.secrets.admin_token,
                token_cache=self.work_dir / ".source-admin-token",
            )
        return self._source_api

    def target_api(self) -> SourceApi:
        """The target's API with the same admin credentials (the accounts were copied), at its public URL."""
        s = self.config.source
        return SourceApi(
            self.config.target.public_url,
            email=s.admin_email,
            password=self.secrets.admin_password,
            token=self.secrets.admin_token,
            label="target",
            token_cache=self.work_dir / ".target-admin-token",
        )

    # databases ----------------------------------------------------------------------------------------------------
    async def _tunnelled(self, url: str, default_port: int) -> str:
        """`url` (as seen on the target host) as reachable from here, through an SSH tunnel."""
        local_host, local_port = await (await self.target()).forward(*host_port(url, default_port))
        return via(url, local_host, local_port)

    async def target_db_url(self) -> str:
        """The target's database URL as reachable from here (through an SSH tunnel)."""
        return await self._tunnelled(self.secrets.target_database_url, 5432)

    async def target_redis_url(self) -> str | None:
        if not self.secrets.target_redis_url:
            return None
        return await self._tunnelled(self.secrets.target_redis_url, 6379)

    async def snapshot_db_url(self) -> str:
        """`<target database>_cutover_snapshot` on the target's server: the source as it was when writes froze."""
        url = await self.target_db_url()
        return with_database(url, database_name(url) + "_cutover_snapshot")

    # the app on the target ----------------------------------------------------------------------------------------
    async def runtime(self) -> Runtime:
        """How the app runs on the target (compose or a plain process), which owns its details."""
        if self._runtime is None:
            from timetodo.ops.migrate.deploy import make_runtime

            self._runtime = make_runtime(self.config, await self.target())
        return self._runtime

    def telegram(self) -> Any:
        if self.config.telegram is None or not self.secrets.telegram_token:
            return None
        from timetodo.ops.adapters.telegram import TelegramClient

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
