"""Secrets and files at rest (issue 10, item 6)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.e2e.server import TIMETODO
from tests.support import PASSWORD, unique_email
from timetodo.core.idempotency import IdempotencyRecord
from timetodo.core.settings import Settings
from timetodo.files.storage import blob_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_register_fingerprint_is_keyed(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The stored fingerprint of a body holding a password is not a plain hash of it (before: unsalted SHA-256,
    brute-forceable offline)."""
    email = unique_email()
    body = f'{{"email": "{email}", "password": "{PASSWORD}"}}'.encode()
    key = uuid.uuid4().hex
    resp = await client.post(
        "/api/v1/auth/register", content=body, headers={"Content-Type": "application/json", "Idempotency-Key": key}
    )
    assert resp.status_code == 201
    async with app.state.sessionmaker() as session:
        row = (await session.execute(select(IdempotencyRecord).where(IdempotencyRecord.key == key))).scalar_one()
    plain = hashlib.sha256()
    for part in (b"POST", b"/api/v1/auth/register", b"application/json", b""):
        plain.update(part + b"\0")
    plain.update(body)
    assert row.fingerprint != plain.hexdigest()
    assert PASSWORD.encode() not in (row.body or b"")


async def test_uploads_and_sqlite_file_are_private(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    up = await client.post(
        f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("s.txt", uuid.uuid4().bytes)}, headers=auth
    )
    assert up.status_code == 201
    blob = blob_path(settings.UPLOAD_DIR, up.json()["sha256"])
    assert _mode(blob) == 0o600
    folder = blob.parent
    while folder != settings.UPLOAD_DIR.parent:
        assert _mode(folder) == 0o700, folder
        folder = folder.parent
    if settings.is_sqlite:
        db = Path(settings.DATABASE_URL.split(":///", 1)[1])
        for file in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if file.exists():
                assert _mode(file) == 0o600, file


@pytest.mark.parametrize(
    ("host", "refused"),
    [("0.0.0.0", True), ("::", True), ("192.0.2.1", True), ("127.0.0.1", False), ("::1", False), ("localhost", False)],
)
def test_default_secret_key_only_on_loopback(host: str, refused: bool) -> None:
    default = Settings(_env_file=None, ENVIRONMENT="development")  # type: ignore[call-arg]
    assert (default.serving_problem(host) is not None) is refused
    own = Settings(_env_file=None, ENVIRONMENT="development", SECRET_KEY="x" * 40)  # type: ignore[call-arg]
    assert own.serving_problem(host) is None


def test_serve_refuses_default_key_on_a_public_address(tmp_path: Path) -> None:
    """Before: development mode served on any address with the built-in key (forgeable tokens). 192.0.2.1 (TEST-NET)
    is never bound: the check runs before anything listens."""
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # run the same code as this test process
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run(
        [TIMETODO, "serve", "--host", "192.0.2.1", "--port", "1", "--no-migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr, result.stderr
