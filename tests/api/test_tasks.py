from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import new_user


async def create_task(client: httpx.AsyncClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/tasks", json={"title": "a task", **fields}, headers=auth)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_task_crud(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    project = (await client.post("/api/v1/projects", json={"name": "Home", "color": "#ff8800"}, headers=auth)).json()
    task = await create_task(
        client,
        auth,
        title="  Buy milk  ",
        description="2 litres",
        project_id=project["id"],
        priority=1,
        labels=["shop", "shop", "errand"],
        estimate_minutes=15,
        due={"datetime": "2026-11-23T18:00:00", "timezone": "Europe/Moscow", "string": "mon 18:00"},
    )
    assert task["title"] == "Buy milk"
    assert task["labels"] == ["shop", "errand"]
    assert task["due"] == {"datetime": "2026-11-23T18:00:00", "timezone": "Europe/Moscow", "string": "mon 18:00"}
    assert task["done"] is False and task["done_at"] is None

    got = (await client.get(f"/api/v1/tasks/{task['id']}", headers=auth)).json()
    assert got == task

    resp = await client.patch(
        f"/api/v1/tasks/{task['id']}", json={"title": "Buy oat milk", "due": {"date": "2026-12-01"}}, headers=auth
    )
    assert resp.status_code == 200
    assert resp.json()["title"] == "Buy oat milk" and resp.json()["due"] == {"date": "2026-12-01"}
    assert resp.json()["description"] == "2 litres"

    resp = await client.patch(f"/api/v1/tasks/{task['id']}", json={"due": None, "project_id": None}, headers=auth)
    assert resp.json()["due"] is None and resp.json()["project_id"] is None

    done = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    assert done["done"] is True and done["done_at"] is not None
    undone = (await client.post(f"/api/v1/tasks/{task['id']}/reopen", headers=auth)).json()
    assert undone["done"] is False and undone["done_at"] is None

    assert (await client.delete(f"/api/v1/tasks/{task['id']}", headers=auth)).status_code == 204
    assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=auth)).status_code == 404
    listed = (await client.get("/api/v1/tasks", headers=auth)).json()["results"]
    assert task["id"] not in [t["id"] for t in listed]


async def test_floating_and_offset_datetimes(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    floating = await create_task(client, auth, due={"datetime": "2026-11-23T09:00:00"})
    assert floating["due"] == {"datetime": "2026-11-23T09:00:00", "timezone": None}
    offset = await create_task(client, auth, due={"datetime": "2026-11-23T09:00:00+00:00", "timezone": "Europe/Moscow"})
    assert offset["due"] == {"datetime": "2026-11-23T12:00:00", "timezone": "Europe/Moscow"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"title": "ok", "description": "d" * 20001}, "description"),
        ({"title": "ok", "priority": 0}, "priority"),
        ({"title": "ok", "priority": 5}, "priority"),
        ({"title": "ok", "priority": "high"}, "priority"),
        ({"title": "ok", "labels": "shop"}, "labels"),
        ({"title": "ok", "labels": ["x" * 65]}, "labels.0"),
        ({"title": "ok", "due": {"date": "2026-11-23", "datetime": "2026-11-23T10:00:00"}}, "due"),
        ({"title": "ok", "due": {"datetime": "2026-11-23T10:00:00", "timezone": "Europe/Atlantis"}}, "due.timezone"),
        ({"title": "ok", "due": {"date": "2026-02-30"}}, "due.date"),
        ({"title": "ok", "project_id": 999999999}, "project_id"),
        ({"title": "ok", "unknown": 1}, "unknown"),
        ({}, "title"),
    ],
)
async def test_task_bad_input(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    before = (await client.get("/api/v1/tasks?limit=200", headers=auth)).json()["results"]
    resp = await client.post("/api/v1/tasks", json=body, headers=auth)
    assert resp.status_code == 422, resp.text
    payload = resp.json()
    assert payload["error"] == "validation_error"
    assert any(err["field"] == field for err in payload["detail"]), payload
    after = (await client.get("/api/v1/tasks?limit=200", headers=auth)).json()["results"]
    assert after == before


async def test_subtasks_one_level(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    parent = await create_task(client, auth, title="parent")
    child = await create_task(client, auth, title="child", parent_id=parent["id"])
    resp = await client.post("/api/v1/tasks", json={"title": "grandchild", "parent_id": child["id"]}, headers=auth)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "parent_id"
    other = await create_task(client, auth, title="other")
    resp = await client.patch(f"/api/v1/tasks/{parent['id']}", json={"parent_id": other["id"]}, headers=auth)
    assert resp.status_code == 422
    resp = await client.patch(f"/api/v1/tasks/{other['id']}", json={"parent_id": other["id"]}, headers=auth)
    assert resp.status_code == 422
    listed = (await client.get(f"/api/v1/tasks?parent_id={parent['id']}", headers=auth)).json()["results"]
    assert [t["id"] for t in listed] == [child["id"]]
    # deleting the parent deletes its subtasks
    await client.delete(f"/api/v1/tasks/{parent['id']}", headers=auth)
    assert (await client.get(f"/api/v1/tasks/{child['id']}", headers=auth)).status_code == 404


async def test_pagination_walks_every_task_once(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    created = [(await create_task(client, auth, title=f"t{i}"))["id"] for i in range(23)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        url = "/api/v1/tasks?limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=auth)).json()
        seen += [t["id"] for t in page["results"]]
        pages += 1
        # a task inserted mid-walk shows up once, at the end, and nothing is skipped or repeated
        if pages == 2:
            created.append((await create_task(client, auth, title="late"))["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    assert pages == 5


@pytest.mark.parametrize("query", ["limit=0", "limit=1000", "limit=abc", "cursor=%%%", "cursor=eyJhZnRlciI6LTF9"])
async def test_bad_pagination(client: httpx.AsyncClient, auth: dict[str, str], query: str) -> None:
    resp = await client.get(f"/api/v1/tasks?{query}", headers=auth)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] in ("validation_error", "invalid_cursor")
    if query.startswith("cursor"):
        assert resp.json()["error"] == "invalid_cursor"


async def test_filters(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    project = (await client.post("/api/v1/projects", json={"name": "Work"}, headers=auth)).json()
    a = await create_task(client, auth, title="Write report", project_id=project["id"])
    b = await create_task(client, auth, title="Call Bob", description="about the 100% report")
    await client.post(f"/api/v1/tasks/{b['id']}/complete", headers=auth)

    async def ids(query: str) -> list[int]:
        resp = await client.get(f"/api/v1/tasks?{query}", headers=auth)
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["results"]]

    assert await ids(f"project_id={project['id']}") == [a["id"]]
    assert await ids("done=true") == [b["id"]]
    assert a["id"] in await ids("done=false") and b["id"] not in await ids("done=false")
    assert await ids("q=REPORT") == [a["id"], b["id"]]
    assert await ids("q=100%25") == [b["id"]]
    assert await ids("q=bob&done=false") == []


async def test_projects_crud_and_delete_cascades(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.post("/api/v1/projects", json={"name": "P", "color": "red"}, headers=auth)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "color"
    project = (await client.post("/api/v1/projects", json={"name": "P"}, headers=auth)).json()
    resp = await client.patch(f"/api/v1/projects/{project['id']}", json={"archived": True}, headers=auth)
    assert resp.json()["archived"] is True
    resp = await client.patch(f"/api/v1/projects/{project['id']}", json={"name": None}, headers=auth)
    assert resp.status_code == 422
    archived = (await client.get("/api/v1/projects?archived=true", headers=auth)).json()["results"]
    assert [p["id"] for p in archived] == [project["id"]]
    task = await create_task(client, auth, project_id=project["id"])
    assert (await client.delete(f"/api/v1/projects/{project['id']}", headers=auth)).status_code == 204
    assert (await client.get(f"/api/v1/projects/{project['id']}", headers=auth)).status_code == 404
    assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=auth)).status_code == 404


async def test_other_users_resources_are_404_everywhere(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    project = (await client.post("/api/v1/projects", json={"name": "mine"}, headers=auth)).json()
    task = await create_task(client, auth, project_id=project["id"])
    intruder, _ = await new_user(client)
    calls = [
        ("GET", f"/api/v1/projects/{project['id']}", None),
        ("PATCH", f"/api/v1/projects/{project['id']}", {"name": "stolen"}),
        ("DELETE", f"/api/v1/projects/{project['id']}", None),
        ("GET", f"/api/v1/tasks/{task['id']}", None),
        ("PATCH", f"/api/v1/tasks/{task['id']}", {"title": "stolen"}),
        ("POST", f"/api/v1/tasks/{task['id']}/complete", None),
        ("POST", f"/api/v1/tasks/{task['id']}/reopen", None),
        ("DELETE", f"/api/v1/tasks/{task['id']}", None),
    ]
    for method, url, body in calls:
        resp = await client.request(method, url, json=body, headers=intruder)
        assert resp.status_code == 404, (method, url, resp.text)
        assert resp.json()["error"] == "not_found"
    # referencing another user's project or task is refused as input
    resp = await client.post("/api/v1/tasks", json={"title": "x", "project_id": project["id"]}, headers=intruder)
    assert resp.status_code == 422
    resp = await client.post("/api/v1/tasks", json={"title": "x", "parent_id": task["id"]}, headers=intruder)
    assert resp.status_code == 422
    listed = (await client.get("/api/v1/tasks", headers=intruder)).json()["results"]
    assert listed == []
    # and the owner's data is untouched
    assert (await client.get(f"/api/v1/tasks/{task['id']}", headers=auth)).json() == task


async def test_huge_ids_are_404_not_500(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    resp = await client.get(f"/api/v1/tasks/{2**70}", headers=auth)
    assert resp.status_code in (404, 422)
    assert resp.json()["error"] in ("not_found", "validation_error")
