"""The toolkit's admin session on the source API is kept between commands (`<work_dir>/.source-admin-token`, 0600):
`plan`, `preflight`, `run`, `--resume` one after the other do not each log in (the app allows a few logins a minute
per address; the next would wait). The kept token is used only for the same URL, account and password."""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.ops.conftest import APP_ADMIN
from tests.support import PASSWORD
from timetodo.ops.errors import EXIT_REFUSED, StepError
from timetodo.ops.migrate.source_api import SourceApi


def recording(api: SourceApi) -> list[str]:
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    api.client.event_hooks["request"].append(record)
    return paths


async def admin_session(url: str, cache: Path, password: str = PASSWORD) -> tuple[list[str], SourceApi]:
    api = SourceApi(url, email=APP_ADMIN, password=password, token=None, token_cache=cache)
    return recording(api), api


async def test_the_admin_token_is_kept_between_commands(app_server: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    app, _ = app_server
    cache = tmp_path / "work" / ".source-admin-token"
    first_paths, first = await admin_session(app.url, cache)
    try:
        await first.check_admin()
    finally:
        await first.close()
    assert first_paths == ["/api/v1/auth/login", "/api/v1/admin/maintenance"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    kept = json.loads(cache.read_text())
    assert kept["url"] == app.url and kept["email"] == APP_ADMIN and PASSWORD not in cache.read_text()

    # the next command: no login
    paths, api = await admin_session(app.url, cache)
    try:
        await api.check_admin()
    finally:
        await api.close()
    assert paths == ["/api/v1/admin/maintenance"]

    # a wrong password is still refused before anything else happens, and the kept token stays
    paths, wrong = await admin_session(app.url, cache, password="not-the-password")
    try:
        with pytest.raises(StepError) as refused:
            await wrong.check_admin()
    finally:
        await wrong.close()
    assert refused.value.exit_code == EXIT_REFUSED and paths == ["/api/v1/auth/login"]
    assert json.loads(cache.read_text())["token"] == kept["token"]

    # another deployment (another URL) does not get this one's token
    other = SourceApi("http://127.0.0.1:9/", email=APP_ADMIN, password=PASSWORD, token=None, token_cache=cache)
    try:
        assert other._cached() is None
    finally:
        await other.close()


async def test_a_refused_kept_token_is_replaced_by_a_new_login(
    app_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    app, _ = app_server
    cache = tmp_path / ".source-admin-token"
    _, first = await admin_session(app.url, cache)
    try:
        await first.check_admin()
    finally:
        await first.close()
    kept = json.loads(cache.read_text())
    cache.write_text(json.dumps({**kept, "token": kept["token"][:-4] + "AAAA"}))  # a token the API refuses

    paths, api = await admin_session(app.url, cache)
    try:
        assert (await api.check_admin())["enabled"] in (True, False)
    finally:
        await api.close()
    assert paths == ["/api/v1/admin/maintenance", "/api/v1/auth/login", "/api/v1/admin/maintenance"]
    # the new login's token was kept: the next command needs no login
    paths, again = await admin_session(app.url, cache)
    try:
        await again.check_admin()
    finally:
        await again.close()
    assert paths == ["/api/v1/admin/maintenance"]


async def test_the_freeze_starts_when_maintenance_is_asked_for_not_when_the_answer_arrives(
    app_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    """The write freeze's recorded start is no later than the moment the source's flag changed (a client's write is
    refused from then on): a failed write before the recorded start would look like downtime outside the freeze."""
    from timetodo.ops.migrate.cutover import freeze_source

    app, _ = app_server
    _paths, api = await admin_session(app.url, tmp_path / ".source-admin-token")
    try:
        started = await freeze_source(api)
        resp = await api.request("GET", "/api/v1/admin/maintenance")
        changed_at = datetime.fromisoformat(resp.json()["changed_at"]).timestamp()
        assert resp.json()["enabled"] is True
        assert started <= changed_at, (started, changed_at)
    finally:
        await api.maintenance(False)
        await api.close()


async def test_a_run_killed_while_asking_for_the_freeze_resumes_with_the_first_start(
    app_server: tuple[ServerProcess, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the maintenance request left but before its answer: the recorded start is already there (the
    source may be frozen from that moment), and the resumed run keeps it and asks again (idempotent) rather than
    recording a later start that would understate the freeze."""
    import asyncio
    from types import SimpleNamespace

    from timetodo.ops.migrate import cutover
    from timetodo.ops.migrate.state import MigrationState

    app, _ = app_server
    _paths, api = await admin_session(app.url, tmp_path / ".source-admin-token")

    async def may_freeze(ctx: object) -> SourceApi:
        return api

    monkeypatch.setattr(cutover, "_may_freeze", may_freeze)
    answer = api.maintenance

    async def slow_answer(*args: object, **kwargs: object) -> None:
        await answer(*args, **kwargs)  # type: ignore[arg-type]
        await asyncio.sleep(5)  # the flag is on; the answer has not arrived when the run dies

    try:
        ctx = SimpleNamespace(state=MigrationState.load(tmp_path), source_api=lambda: api)
        api.maintenance = slow_answer  # type: ignore[method-assign]
        before = __import__("time").time()
        killed = asyncio.create_task(cutover._freeze(ctx))  # type: ignore[arg-type]
        await asyncio.sleep(1.0)
        killed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killed
        recorded = MigrationState.load(tmp_path).facts.freeze_started_at
        assert recorded is not None and before <= recorded  # on the old code: None, and a later start on resume
        api.maintenance = answer  # type: ignore[method-assign]
        await api.maintenance(False)  # as if the first request had not reached the source: the resume asks again
        resumed = SimpleNamespace(state=MigrationState.load(tmp_path), source_api=lambda: api)
        assert await cutover._freeze(resumed) == recorded  # type: ignore[arg-type]
        resp = await api.request("GET", "/api/v1/admin/maintenance")
        assert resp.json()["enabled"] is True
    finally:
        api.maintenance = answer  # type: ignore[method-assign]
        await api.maintenance(False)
        await api.close()
