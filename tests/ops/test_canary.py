"""The canary account and the load mix (issue 13, item 4) against a real `timetodo serve`: planted through the admin
API with a task and a file, exercised as a client would (login, migrated task and file, WebSocket event, complete,
upload/download), removed with its files; the mix measures p50/p95/p99 and notices failed requests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.ops.conftest import APP_ADMIN as ADMIN
from tests.support import PASSWORD
from timetodo.files import storage
from timetodo.ops.migrate.source_api import SourceApi
from timetodo.ops.migrate.validate import canary
from timetodo.ops.migrate.validate.load import LoadFigures, compare_load, mixed_load


async def test_planted_canary_is_exercised_and_removed_with_its_files(
    app_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    app, uploads = app_server
    api = SourceApi(app.url, email=ADMIN, password=PASSWORD, token=None)
    try:
        facts = await canary.plant(api, tmp_path, load_seconds=1.5, load_connections=4)
    finally:
        await api.close()
    assert facts["user_id"] > 0 and facts["email"].startswith("timetodo-canary-")
    password_file = tmp_path / canary.PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert canary.read_password(tmp_path) not in str(facts)
    source_load = LoadFigures.from_dict(facts["source_load"])
    assert source_load.requests > 0 and source_load.failures == 0 and source_load.writes > 0, source_load
    blob = storage.blob_path(uploads, facts["sha256"])
    assert blob.exists()

    check = await canary.exercise(app.url, facts, canary.read_password(tmp_path))
    assert check.ok, check.errors
    assert [s["step"] for s in check.steps] == [
        "log in",
        "read the migrated task",
        "download the migrated file",
        "open the WebSocket",
        "create a task, receive its event",
        "complete the task",
        "upload and download a file",
    ]

    target = SourceApi(app.url, email=ADMIN, password=PASSWORD, token=None, label="target")
    try:
        assert await target.delete_user(facts["user_id"]) is True
        assert await target.delete_user(facts["user_id"]) is False  # already gone: not an error
    finally:
        await target.close()
    assert not blob.exists(), "the canary's file stays on disk after its account was deleted"
    again = await canary.exercise(app.url, facts, canary.read_password(tmp_path))
    assert not again.ok and again.steps[0]["step"] == "log in" and len(again.steps) == 1


async def test_a_canary_whose_data_did_not_arrive_fails_by_name(
    app_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    app, _ = app_server
    api = SourceApi(app.url, email=ADMIN, password=PASSWORD, token=None)
    try:
        facts = await canary.plant(api, tmp_path, load_seconds=0.2, load_connections=1)
        wrong = {**facts, "sha256": hashlib.sha256(b"other bytes").hexdigest()}
        check = await canary.exercise(app.url, wrong, canary.read_password(tmp_path))
        assert not check.ok and "download the migrated file" in check.errors[0], check.errors
        assert await api.delete_user(facts["user_id"])
    finally:
        await api.close()


async def test_the_mix_counts_failures_and_compare_load_judges_them(app_server: tuple[ServerProcess, Path]) -> None:
    app, _ = app_server
    refused = await mixed_load(app.url, "not-a-token", seconds=0.5, connections=2)
    assert refused.requests > 0 and refused.failures == refused.requests
    assert refused.first_failure is not None and "HTTP 401" in refused.first_failure
    async with httpx.AsyncClient(base_url=app.url) as client:
        token = (await client.post("/api/v1/auth/login", data={"username": ADMIN, "password": PASSWORD})).json()[
            "access_token"
        ]
    good = await mixed_load(app.url, token, seconds=1.0, connections=4, seed=7)
    assert good.failures == 0 and good.reads > good.writes > 0
    assert good.p50_ms is not None and good.p95_ms is not None and good.p99_ms is not None
    assert good.p50_ms <= good.p95_ms <= good.p99_ms
    assert compare_load(good, good).ok and not compare_load(good, good).warnings
    failed = compare_load(good, refused)
    assert not failed.ok and "failed on the target" in failed.errors[0]
    assert compare_load(None, good).warnings and compare_load(None, good).ok


def _figures(p50: float, p95: float, requests: int) -> LoadFigures:
    return LoadFigures("http://x", 16, 10.0, requests=requests, p50_ms=p50, p95_ms=p95, p99_ms=p95 * 1.5)


@pytest.mark.parametrize(
    ("target", "verdict"),
    [
        (_figures(5.0, 10.0, 5000), "ok"),
        (_figures(5.2, 11.5, 4900), "ok"),  # within max(1.1×, +2 ms)
        (_figures(6.0, 14.0, 4500), "warning"),  # slower, inside the noise of a busy host
        (_figures(25.0, 40.0, 3000), "error"),  # p50 beyond 2× + 10 ms
        (_figures(5.0, 10.0, 2000), "error"),  # under half the throughput
    ],
)
def test_slower_is_a_warning_unless_far_outside_the_noise(target: LoadFigures, verdict: str) -> None:
    result = compare_load(_figures(5.0, 10.0, 5000), target)
    got = "error" if result.errors else "warning" if result.warnings else "ok"
    assert got == verdict, (result.errors, result.warnings)


def test_the_password_file_is_never_world_readable(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        canary._write_password(tmp_path / "work", "secret")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "work" / canary.PASSWORD_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "work").stat().st_mode) == 0o700
