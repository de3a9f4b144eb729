"""`timetodo files verify --delete-orphans` while users upload (issue 10, item 7): an upload that finishes while the
run goes on keeps its file; only orphans committed before the run started, and still unreferenced at deletion time,
are deleted. On SQLite and PostgreSQL (the `settings` fixture's backends), with real uploads through the API.
"""

from __future__ import annotations

import hashlib
import os
import time

import httpx
from fastapi import FastAPI

from timetodo.core.settings import Settings
from timetodo.files import storage
from timetodo.files.service import verify_files


async def test_delete_orphans_keeps_an_upload_that_finishes_during_the_run(
    app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "verify race"}, headers=auth)).json()
    # an old orphan (no attachment refers to it): the run must delete it
    orphan = hashlib.sha256(b"old orphan " + os.urandom(8)).hexdigest()
    orphan_path = storage.blob_path(settings.UPLOAD_DIR, orphan)
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(b"old orphan")
    an_hour_ago = time.time() - 3600
    os.utime(orphan_path, (an_hour_ago, an_hour_ago))
    # the same bytes as an old orphan, uploaded during the run: the orphan's file becomes the upload's
    shared = b"bytes left behind, then uploaded again " + os.urandom(8)
    shared_sha = hashlib.sha256(shared).hexdigest()
    shared_path = storage.blob_path(settings.UPLOAD_DIR, shared_sha)
    shared_path.parent.mkdir(parents=True, exist_ok=True)
    shared_path.write_bytes(shared)
    os.utime(shared_path, (an_hour_ago, an_hour_ago))

    uploaded: list[dict[str, object]] = []

    async def upload_while_verify_runs() -> None:
        """Between verify's listing of the live attachments and its deletions: two uploads return 201."""
        for name, content in (("fresh.txt", b"fresh upload " + os.urandom(8)), ("again.txt", shared)):
            response = await client.post(
                f"/api/v1/tasks/{task['id']}/attachments", files={"file": (name, content, "text/plain")}, headers=auth
            )
            assert response.status_code == 201, response.text
            uploaded.append(response.json())

    async with app.state.sessionmaker() as session:
        report = await verify_files(
            session, settings.UPLOAD_DIR, delete_orphans=True, on_listed=upload_while_verify_runs
        )

    assert orphan in report.removed and not orphan_path.exists()
    for attachment in uploaded:
        assert attachment["sha256"] not in report.removed
        assert storage.blob_path(settings.UPLOAD_DIR, str(attachment["sha256"])).is_file()
        download = await client.get(f"/api/v1/attachments/{attachment['id']}", headers=auth)
        assert download.status_code == 200, (attachment, download.status_code)
    # the next run sees them as live (the upload dir is shared with other tests: look at ours only)
    async with app.state.sessionmaker() as session:
        again = await verify_files(session, settings.UPLOAD_DIR, delete_orphans=True)
    mine = {str(a["sha256"]) for a in uploaded}
    assert not mine & {*again.removed, *again.missing, *again.orphaned}
    for attachment in uploaded:
        await client.delete(f"/api/v1/attachments/{attachment['id']}", headers=auth)
