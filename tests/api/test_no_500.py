"""No request a user can send ends in a 500 (issue 10, item 3): each case answered `500 internal_error` before."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import delete

from tests.support import PASSWORD, new_user
from timetodo.auth.models import User


def assert_envelope(resp: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error", "detail"}, body
    return body


def big_cursor(key: str = "after") -> str:
    return base64.urlsafe_b64encode(orjson.dumps({key: 2**63})).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/projects", "/api/v1/time-entries"])
async def test_cursor_beyond_bigint(client: httpx.AsyncClient, auth: dict[str, str], path: str) -> None:
    body = assert_envelope(await client.get(path, params={"cursor": big_cursor()}, headers=auth), 422)
    assert body["error"] == "invalid_cursor"


async def test_sync_token_beyond_bigint(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for key in ("v", "version", "after"):
        resp = await client.get("/api/v1/sync", params={"token": big_cursor(key)}, headers=auth)
        assert_envelope(resp, 422, 410)


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-01-01T00:00:00"},
        {"from": "0001-01-01T00:00:00+05:00"},
        {"to": "9999-12-31T23:59:59-05:00"},
    ],
)
async def test_time_entry_filters(client: httpx.AsyncClient, auth: dict[str, str], params: dict[str, str]) -> None:
    assert_envelope(await client.get("/api/v1/time-entries", params=params, headers=auth), 422)


async def test_report_at_the_ends_of_the_calendar(client: httpx.AsyncClient) -> None:
    tokyo, _ = await new_user(client, timezone="Asia/Tokyo")
    for params in ({"from": "9999-12-31", "to": "9999-12-31"}, {"from": "0001-01-01", "to": "0001-01-02"}):
        assert_envelope(await client.get("/api/v1/reports/time", params=params, headers=tokyo), 422)


async def test_datetimes_at_year_1_and_9999(client: httpx.AsyncClient) -> None:
    auth, _ = await new_user(client, timezone="Asia/Tokyo")
    for due in (
        {"datetime": "0001-01-01T00:00:00", "timezone": "Asia/Tokyo"},
        {"datetime": "9999-12-31T23:59:59", "timezone": "America/New_York"},
        {"date": "0001-01-01"},
        {"date": "9999-12-31"},
    ):
        assert_envelope(await client.post("/api/v1/tasks", json={"title": "t", "due": due}, headers=auth), 422)
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    resp = await client.post(
        f"/api/v1/tasks/{task['id']}/reminders", json={"remind_at": "0001-01-01T00:00:00+01:00"}, headers=auth
    )
    assert_envelope(resp, 422)
    entry = {"started_at": "0001-01-01T00:00:00+01:00", "ended_at": "0001-01-01T01:00:00+01:00"}
    assert_envelope(await client.post("/api/v1/time-entries", json=entry, headers=auth), 422)


@pytest.mark.parametrize("token", ["².x", "99999999999999999999.x", "0.x", "-1.x", "1" * 30 + ".abc"])
async def test_refresh_token_shapes(client: httpx.AsyncClient, token: str) -> None:
    for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
        assert_envelope(await client.post(path, json={"refresh_token": token}), 401)


async def test_malformed_multipart(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    url = f"/api/v1/tasks/{task['id']}/attachments"
    garbage = await client.post(
        url, content=b"\x00garbage\r\n--x--", headers={**auth, "Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_envelope(garbage, 422)
    long_boundary = "b" * 300
    body = f'--{long_boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--{long_boundary}--\r\n'
    resp = await client.post(
        url, content=body.encode(), headers={**auth, "Content-Type": f"multipart/form-data; boundary={long_boundary}"}
    )
    assert_envelope(resp, 422)
    huge_header = b"--x\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n\r\ndata\r\n--x--\r\n"
    resp = await client.post(
        url, content=huge_header, headers={**auth, "Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_envelope(resp, 422)


async def test_nul_characters_are_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    nul = "a\x00b"
    assert_envelope(await client.post("/api/v1/tasks", json={"title": nul}, headers=auth), 422)
    assert_envelope(await client.post("/api/v1/tasks", json={"title": "t", "description": nul}, headers=auth), 422)
    assert_envelope(await client.post("/api/v1/tasks", json={"title": "t", "labels": [nul]}, headers=auth), 422)
    due = {"date": "2026-01-01", "string": nul}
    assert_envelope(await client.post("/api/v1/tasks", json={"title": "t", "due": due}, headers=auth), 422)
    assert_envelope(await client.post("/api/v1/projects", json={"name": nul}, headers=auth), 422)
    assert_envelope(await client.post("/api/v1/timer/start", json={"note": nul}, headers=auth), 422)
    assert_envelope(await client.get("/api/v1/tasks", params={"q": nul}, headers=auth), 422)
    assert_envelope(await client.get("/api/v1/tasks", params={"label": nul}, headers=auth), 422)
    login = await client.post("/api/v1/auth/login", data={"username": nul, "password": PASSWORD})
    assert_envelope(login, 422, 401)
    # the labels filter still works for everyone afterwards
    assert (await client.get("/api/v1/tasks", params={"label": "ok"}, headers=auth)).status_code == 200


async def test_deleted_users_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    auth, tokens = await new_user(client)
    async with app.state.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == tokens["user"]["id"]))
        await session.commit()
    assert_envelope(await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth), 401, 404, 409)
    assert_envelope(await client.post("/api/v1/projects", json={"name": "p"}, headers=auth), 401, 404, 409)
    assert_envelope(await client.post("/api/v1/timer/start", json={}, headers=auth), 401, 404, 409)
    resp = await client.get("/api/v1/sync", headers=auth)
    assert resp.status_code < 500, resp.text


async def test_range_and_head_on_downloads(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    up = await client.post(
        f"/api/v1/tasks/{task['id']}/attachments", files={"file": ("a.txt", b"0123456789abcdef")}, headers=auth
    )
    url = f"/api/v1/attachments/{up.json()['id']}"
    for bad in ("bytes=10-5", "bytes=100-200", "bytes=abc", "items=0-1"):
        resp = await client.get(url, headers={**auth, "Range": bad})
        body = assert_envelope(resp, 416)
        assert body["error"] == "range_not_satisfiable"
        assert resp.headers["content-range"] == "bytes */16"
    ok = await client.get(url, headers={**auth, "Range": "bytes=2-5"})
    assert ok.status_code == 206 and ok.content == b"2345"
    head = await client.head(url, headers=auth)
    assert head.status_code == 200 and head.headers["content-length"] == "16" and head.content == b""


async def test_localtime_is_not_a_time_zone(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for zone in ("localtime", "posixrules", "posix/Europe/Moscow"):
        assert_envelope(await client.patch("/api/v1/users/me", json={"timezone": zone}, headers=auth), 422)
    assert (await client.patch("/api/v1/users/me", json={"timezone": "Asia/Tokyo"}, headers=auth)).status_code == 200
