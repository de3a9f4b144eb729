from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import asgi_client, running_app
from tests.support import new_user
from timetodo.core.settings import Settings
from timetodo.files import storage
from timetodo.files.service import verify_files

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 200


async def make_task(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    resp = await client.post("/api/v1/tasks", json={"title": "with files"}, headers=auth)
    return dict(resp.json())


async def upload(
    client: httpx.AsyncClient, auth: dict[str, str], task_id: int, name: str, content: bytes, ctype: str = "image/jpeg"
) -> httpx.Response:
    return await client.post(
        f"/api/v1/tasks/{task_id}/attachments", files={"file": (name, content, ctype)}, headers=auth
    )


def incoming_files(settings: Settings) -> list[Path]:
    folder = settings.UPLOAD_DIR / storage.INCOMING
    return list(folder.iterdir()) if folder.exists() else []


async def test_upload_download_delete(client: httpx.AsyncClient, auth: dict[str, str], settings: Settings) -> None:
    task = await make_task(client, auth)
    resp = await upload(client, auth, task["id"], "diagram.png", PNG, ctype="text/html")
    assert resp.status_code == 201, resp.text
    att = resp.json()
    assert att["content_type"] == "image/png"  # sniffed, not the client's claim
    assert att["sha256"] == hashlib.sha256(PNG).hexdigest() and att["size"] == len(PNG)
    assert storage.blob_path(settings.UPLOAD_DIR, att["sha256"]).read_bytes() == PNG

    got = await client.get(f"/api/v1/attachments/{att['id']}", headers=auth)
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"
    assert (
        got.headers["content-disposition"].startswith("attachment;")
        and "diagram.png" in got.headers["content-disposition"]
    )
    part = await client.get(f"/api/v1/attachments/{att['id']}", headers={**auth, "Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == PNG[:8]
    assert part.headers["content-range"] == f"bytes 0-7/{len(PNG)}"
    tail = await client.get(f"/api/v1/attachments/{att['id']}", headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == PNG[-10:]

    listed = (await client.get(f"/api/v1/tasks/{task['id']}/attachments", headers=auth)).json()
    assert [a["id"] for a in listed] == [att["id"]]

    other, _ = await new_user(client)
    assert (await client.get(f"/api/v1/attachments/{att['id']}", headers=other)).status_code == 404
    assert (await client.delete(f"/api/v1/attachments/{att['id']}", headers=other)).status_code == 404
    assert (await upload(client, other, task["id"], "x.txt", b"hello")).status_code == 404

    assert (await client.delete(f"/api/v1/attachments/{att['id']}", headers=auth)).status_code == 204
    assert (await client.get(f"/api/v1/attachments/{att['id']}", headers=auth)).status_code == 404
    assert not storage.blob_path(settings.UPLOAD_DIR, att["sha256"]).exists()


async def test_same_content_is_stored_once(client: httpx.AsyncClient, auth: dict[str, str], settings: Settings) -> None:
    task = await make_task(client, auth)
    content = b"shared bytes " * 100
    first = (await upload(client, auth, task["id"], "a.txt", content)).json()
    second = (await upload(client, auth, task["id"], "b.txt", content)).json()
    assert first["sha256"] == second["sha256"] and first["content_type"] == "text/plain"
    await client.delete(f"/api/v1/attachments/{first['id']}", headers=auth)
    # still referenced by the second attachment
    assert (await client.get(f"/api/v1/attachments/{second['id']}", headers=auth)).content == content
    await client.delete(f"/api/v1/attachments/{second['id']}", headers=auth)
    assert not storage.blob_path(settings.UPLOAD_DIR, first["sha256"]).exists()


async def test_filenames_are_sanitised(client: httpx.AsyncClient, auth: dict[str, str], settings: Settings) -> None:
    task = await make_task(client, auth)
    for raw, expected in [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("...", "file"),
    ]:
        resp = await upload(client, auth, task["id"], raw, b"data")
        assert resp.status_code == 201, resp.text
        assert resp.json()["filename"] == expected
    assert not (settings.UPLOAD_DIR.parent / "etc").exists()
    # control and bidi-override characters (clients percent-encode some of them; the server strips the raw ones)
    assert storage.sanitize_filename("evil\x00\x1b[31mname\u202e.txt\n") == "evil[31mname.txt"
    assert storage.sanitize_filename("a" * 300 + ".pdf").endswith(".pdf")
    assert len(storage.sanitize_filename("я" * 300).encode()) <= 255


async def test_rejected_uploads_leave_nothing(tmp_path: Path, settings: Settings) -> None:
    small = settings.model_copy(update={"MAX_UPLOAD_MB": 1, "USER_QUOTA_MB": 2, "UPLOAD_DIR": tmp_path / "up"})
    async with running_app(small) as app, asgi_client(app) as client:
        auth, _ = await new_user(client)
        task = await make_task(client, auth)
        too_big = b"x" * (1024 * 1024 + 1)
        resp = await upload(client, auth, task["id"], "big.bin", too_big)
        assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"
        resp = await upload(client, auth, task["id"], "empty.txt", b"")
        assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "file"
        resp = await client.post(
            f"/api/v1/tasks/{task['id']}/attachments",
            content=b"raw",
            headers={**auth, "Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 415 and resp.json()["error"] == "unsupported_media_type"
        resp = await client.post(
            f"/api/v1/tasks/{task['id']}/attachments", files={"other": ("a", b"abc")}, headers=auth
        )
        assert resp.status_code == 422
        # quota: two files of ~0.9 MB fit under 2 MB, the third does not
        near_limit = 900 * 1024
        assert (await upload(client, auth, task["id"], "1.bin", b"1" * near_limit)).status_code == 201
        assert (await upload(client, auth, task["id"], "2.bin", b"2" * near_limit)).status_code == 201
        resp = await upload(client, auth, task["id"], "3.bin", b"3" * near_limit)
        assert resp.status_code == 413 and resp.json()["error"] == "quota_exceeded"
        listed = (await client.get(f"/api/v1/tasks/{task['id']}/attachments", headers=auth)).json()
        assert [a["filename"] for a in listed] == ["1.bin", "2.bin"]
        # no partial or orphan files after the rejections
        assert incoming_files(small) == []
        assert sorted(sha for sha, _ in storage.iter_blobs(small.UPLOAD_DIR)) == sorted(a["sha256"] for a in listed)


async def test_files_verify(app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str], settings: Settings) -> None:
    task = await make_task(client, auth)
    good = (await upload(client, auth, task["id"], "good.txt", b"good content")).json()
    corrupt = (await upload(client, auth, task["id"], "corrupt.txt", b"will be damaged")).json()
    missing = (await upload(client, auth, task["id"], "missing.txt", b"will vanish")).json()
    storage.blob_path(settings.UPLOAD_DIR, corrupt["sha256"]).write_bytes(b"damaged")
    storage.blob_path(settings.UPLOAD_DIR, missing["sha256"]).unlink()
    orphan = hashlib.sha256(b"orphan").hexdigest()
    orphan_path = storage.blob_path(settings.UPLOAD_DIR, orphan)
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(b"orphan")
    an_hour_ago = time.time() - 3600
    os.utime(orphan_path, (an_hour_ago, an_hour_ago))  # verify only treats blobs older than its run as orphans
    async with app.state.sessionmaker() as session:
        report = await verify_files(session, settings.UPLOAD_DIR)
    assert corrupt["sha256"] in report.corrupt and missing["sha256"] in report.missing
    assert orphan in report.orphaned and good["sha256"] not in report.corrupt + report.missing
    assert not report.healthy
    async with app.state.sessionmaker() as session:
        await verify_files(session, settings.UPLOAD_DIR, delete_orphans=True)
    assert not orphan_path.exists()
    # leave the shared upload dir healthy for other tests
    for att in (corrupt, missing):
        await client.delete(f"/api/v1/attachments/{att['id']}", headers=auth)
