"""Account management by admins: `POST/DELETE /api/v1/admin/users` and `timetodo user delete|deactivate|activate`.
Deleting an account removes everything it owns and the stored files nobody else uses — never a file another
account still references."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import httpx
from fastapi import FastAPI

from tests.api.test_files import PNG, make_task, upload
from tests.api.test_operations import _make_admin
from tests.support import PASSWORD, login, new_user, unique_email
from timetodo.core.maintenance import set_maintenance
from timetodo.core.settings import Settings
from timetodo.files import storage


async def test_admin_creates_and_deletes_an_account_with_everything_it_owns(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await _make_admin(app, client)
    email = unique_email("made-by-admin")
    created = await client.post("/api/v1/admin/users", json={"email": email, "password": PASSWORD}, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["email"] == email and created.json()["is_admin"] is False
    again = await client.post("/api/v1/admin/users", json={"email": email, "password": PASSWORD}, headers=admin)
    assert again.status_code == 409 and again.json()["error"] == "email_taken"

    token = (await login(client, email)).json()["access_token"]
    doomed = {"Authorization": f"Bearer {token}"}
    task = await make_task(client, doomed)
    own = PNG + os.urandom(32)  # bytes only this account stores
    shared = PNG + b"shared by two accounts"
    assert (await upload(client, doomed, task["id"], "own.png", own)).status_code == 201
    assert (await upload(client, doomed, task["id"], "shared.png", shared)).status_code == 201
    other, _ = await new_user(client)
    other_task = await make_task(client, other)
    assert (await upload(client, other, other_task["id"], "shared.png", shared)).status_code == 201
    own_blob = storage.blob_path(settings.UPLOAD_DIR, hashlib.sha256(own).hexdigest())
    shared_blob = storage.blob_path(settings.UPLOAD_DIR, hashlib.sha256(shared).hexdigest())
    assert own_blob.exists() and shared_blob.exists()

    deleted = await client.delete(f"/api/v1/admin/users/{created.json()['id']}", headers=admin)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get("/api/v1/users/me", headers=doomed)).status_code == 401
    assert (await login(client, email)).status_code == 401
    assert not own_blob.exists(), "a file only the deleted account stored stays on disk"
    assert shared_blob.exists(), "a file another account still uses was removed"
    assert (await client.get(f"/api/v1/tasks/{other_task['id']}/attachments", headers=other)).json()
    gone = await client.delete(f"/api/v1/admin/users/{created.json()['id']}", headers=admin)
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"


async def test_only_admins_manage_accounts_and_never_during_maintenance(
    app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    admin = await _make_admin(app, client)
    body = {"email": unique_email(), "password": PASSWORD}
    assert (await client.post("/api/v1/admin/users", json=body, headers=auth)).status_code == 403
    me = (await client.get("/api/v1/users/me", headers=admin)).json()
    assert (await client.delete(f"/api/v1/admin/users/{me['id']}", headers=admin)).status_code == 409
    for bad in ("0", "-1", "abc", str(2**70)):
        assert (await client.delete(f"/api/v1/admin/users/{bad}", headers=admin)).status_code == 422, bad
    async with app.state.sessionmaker() as session:
        await set_maintenance(session, True, "test")
    app.state.maintenance_cache.set(True)
    try:
        refused = await client.post("/api/v1/admin/users", json=body, headers=admin)
        assert refused.status_code == 503 and refused.json()["error"] == "maintenance"
    finally:
        async with app.state.sessionmaker() as session:
            await set_maintenance(session, False, None)
        app.state.maintenance_cache.set(False)
    assert (await client.post("/api/v1/admin/users", json=body, headers=admin)).status_code == 201


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL,
        "UPLOAD_DIR": str(settings.UPLOAD_DIR),
        "SECRET_KEY": settings.SECRET_KEY.get_secret_value(),
        "REDIS_URL": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "timetodo", "user", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_deactivates_activates_and_deletes(client: httpx.AsyncClient, settings: Settings) -> None:
    _, tokens = await new_user(client)
    email = tokens["user"]["email"]
    result = _cli(settings, "deactivate", email)
    assert result.returncode == 0, result.stderr
    assert (await login(client, email)).status_code == 401
    assert _cli(settings, "activate", email).returncode == 0
    assert (await login(client, email)).status_code == 200
    unconfirmed = _cli(settings, "delete", email)
    assert unconfirmed.returncode == 4 and "--yes" in unconfirmed.stderr
    assert (await login(client, email)).status_code == 200
    result = _cli(settings, "delete", email, "--yes")
    assert result.returncode == 0 and f"deleted user {tokens['user']['id']}" in result.stdout, result.stderr
    assert (await login(client, email)).status_code == 401
    missing = _cli(settings, "delete", email, "--yes")
    assert missing.returncode == 4 and "No user" in missing.stderr
