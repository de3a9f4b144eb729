"""The fast path of the hot task endpoints (timetodo.core.fastpath): ordinary requests skip FastAPI's dependency
solving, and every request — ordinary or not — gets the same answer as through FastAPI's own path."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import routing as fastapi_routing

from tests.support import new_user
from timetodo.core import fastpath

VOLATILE = {"id", "created_at", "updated_at"}


def _normal(response: httpx.Response) -> tuple[int, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.is_success and isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, body


async def test_hot_endpoints_skip_dependency_solving(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    original = fastapi_routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi_routing, "solve_dependencies", counting)
    created = await client.post("/api/v1/tasks", json={"title": "fast", "labels": ["x"]}, headers=auth)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    page = await client.get("/api/v1/tasks?limit=50", headers=auth)
    assert page.status_code == 200 and page.json()["results"][-1]["id"] == task_id
    got = await client.get(f"/api/v1/tasks/{task_id}", headers=auth)
    assert got.status_code == 200 and got.json()["title"] == "fast"
    assert solved == []  # before: one solving per request

    refused = await client.get("/api/v1/tasks?limit=0", headers=auth)  # unusual: FastAPI's path answers
    assert refused.status_code == 422
    assert solved == ["/api/v1/tasks"]


async def test_same_answers_either_way(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other, _ = await new_user(client)
    mine = (await client.post("/api/v1/tasks", json={"title": "mine"}, headers=auth)).json()["id"]
    theirs = (await client.post("/api/v1/tasks", json={"title": "theirs"}, headers=other)).json()["id"]
    bad_token = {"Authorization": "Bearer not-a-token"}
    json_type = {"Content-Type": "application/json"}
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/api/v1/tasks", auth, None),
        ("GET", "/api/v1/tasks", {}, None),
        ("GET", "/api/v1/tasks", bad_token, None),
        ("GET", "/api/v1/tasks", {"Authorization": "Basic abc"}, None),
        ("GET", "/api/v1/tasks?limit=0", auth, None),
        ("GET", "/api/v1/tasks?limit=201", auth, None),
        ("GET", "/api/v1/tasks?limit=abc", auth, None),
        ("GET", "/api/v1/tasks?limit=%C2%B2", auth, None),
        ("GET", "/api/v1/tasks?limit=1&limit=2", auth, None),
        ("GET", "/api/v1/tasks?limit=1", auth, None),
        ("GET", "/api/v1/tasks?limit=1&cursor=", auth, None),
        ("GET", "/api/v1/tasks?cursor=garbage", auth, None),
        ("GET", "/api/v1/tasks?cursor=" + "a" * 201, auth, None),
        ("GET", "/api/v1/tasks?done=maybe", auth, None),
        ("GET", "/api/v1/tasks?done=false&limit=5", auth, None),
        ("GET", "/api/v1/tasks?unknown=1", auth, None),
        ("GET", "/api/v1/tasks?limit=0", {}, None),
        ("GET", f"/api/v1/tasks/{mine}", auth, None),
        ("GET", f"/api/v1/tasks/{theirs}", auth, None),
        ("GET", f"/api/v1/tasks/{mine}", {}, None),
        ("GET", "/api/v1/tasks/0", auth, None),
        ("GET", "/api/v1/tasks/99999999999999999999999", auth, None),
        ("GET", "/api/v1/tasks/abc", auth, None),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "a", "labels": ["x", "x"], "priority": 2}'),
        ("POST", "/api/v1/tasks", {**auth, "Content-Type": "application/json; charset=utf-8"}, b'{"title": "b"}'),
        ("POST", "/api/v1/tasks", json_type, b'{"title": "no auth"}'),
        ("POST", "/api/v1/tasks", {**bad_token, **json_type}, b'{"title": "bad token"}'),
        ("POST", "/api/v1/tasks", json_type, b'{"title": ""}'),  # invalid and no auth
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": ""}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "x", "extra": 1}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "x", "priority": NaN}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "x",'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b""),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b"[1, 2]"),
        ("POST", "/api/v1/tasks", {**auth, "Content-Type": "text/plain"}, b'{"title": "x"}'),
        ("POST", "/api/v1/tasks", auth, b'{"title": "no type"}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "x", "priority": 99999999999999999999999}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "nul \\u0000"}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "p", "project_id": 999999}'),
        ("POST", "/api/v1/tasks", {**auth, **json_type}, b'{"title": "d", "due": {"date": "2030-01-02"}}'),
    ]
    for method, path, headers, body in requests:
        answers = []
        for enabled in (True, False):
            monkeypatch.setattr(fastpath, "ENABLED", enabled)
            response = await client.request(method, path, headers=headers, content=body)
            answers.append(_normal(response))
        assert answers[0] == answers[1], (method, path, body)
