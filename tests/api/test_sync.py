"""GET /api/v1/sync: a client mirrors its data exactly by replaying the answers into dicts."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from tests.support import new_user

KINDS = ("projects", "tasks", "time_entries")
LIST_PATHS = {"projects": "/api/v1/projects", "tasks": "/api/v1/tasks", "time_entries": "/api/v1/time-entries"}


class Mirror:
    """What a client keeps: rows by id per kind, and its token."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.token: str | None = None
        self.pages = 0

    async def pull(self, client: httpx.AsyncClient, headers: dict[str, str], limit: int = 500) -> None:
        while True:
            params: dict[str, Any] = {"limit": limit, **({"token": self.token} if self.token else {})}
            resp = await client.get("/api/v1/sync", params=params, headers=headers)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            self.pages += 1
            for kind in KINDS:
                for row in page[kind]:
                    self.rows[kind][row["id"]] = row
                for deleted in page["deleted"][kind]:
                    self.rows[kind].pop(deleted, None)
            self.token = page["token"]
            if not page["has_more"]:
                return


async def server_state(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[int, dict[str, Any]]]:
    state: dict[str, dict[int, dict[str, Any]]] = {}
    for kind, path in LIST_PATHS.items():
        rows: dict[int, dict[str, Any]] = {}
        cursor = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = (await client.get(path, params=params, headers=headers)).json()
            rows.update({row["id"]: row for row in page["results"]})
            if not (cursor := page["next_cursor"]):
                break
        state[kind] = rows
    return state


def comparable(state: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[int, dict[str, Any]]]:
    """A running entry's duration grows with the clock; everything else must match exactly."""
    out = {kind: {i: dict(row) for i, row in rows.items()} for kind, rows in state.items()}
    for row in out["time_entries"].values():
        if row["running"]:
            row.pop("duration_seconds")
    return out


async def random_writes(client: httpx.AsyncClient, headers: dict[str, str], rng: random.Random, n: int) -> None:
    projects: list[int] = []
    tasks: list[int] = []
    entries: list[int] = []
    hour = rng.randrange(0, 10_000)
    for _ in range(n):
        action = rng.choice(
            [
                "project",
                "task",
                "task",
                "subtask",
                "update",
                "complete",
                "reopen",
                "delete_task",
                "delete_project",
                "entry",
                "delete_entry",
                "timer",
                "update_project",
            ]
        )
        if action == "project" or (action in ("delete_project", "update_project") and not projects):
            resp = await client.post("/api/v1/projects", json={"name": f"p{rng.random():.5f}"}, headers=headers)
            projects.append(resp.json()["id"])
        elif action == "update_project":
            await client.patch(f"/api/v1/projects/{rng.choice(projects)}", json={"archived": True}, headers=headers)
        elif action == "delete_project":
            await client.delete(f"/api/v1/projects/{projects.pop(rng.randrange(len(projects)))}", headers=headers)
        elif action == "task" or not tasks:
            body: dict[str, Any] = {"title": f"t{rng.random():.5f}", "labels": ["x"] if rng.random() < 0.5 else []}
            if projects and rng.random() < 0.5:
                body["project_id"] = rng.choice(projects)
            resp = await client.post("/api/v1/tasks", json=body, headers=headers)
            if resp.status_code == 201:
                tasks.append(resp.json()["id"])
        elif action == "subtask":
            resp = await client.post(
                "/api/v1/tasks", json={"title": "sub", "parent_id": rng.choice(tasks)}, headers=headers
            )
            if resp.status_code == 201:
                tasks.append(resp.json()["id"])
        elif action == "update":
            await client.patch(
                f"/api/v1/tasks/{rng.choice(tasks)}", json={"title": f"u{rng.random():.5f}"}, headers=headers
            )
        elif action in ("complete", "reopen"):
            await client.post(f"/api/v1/tasks/{rng.choice(tasks)}/{action}", headers=headers)
        elif action == "delete_task":
            await client.delete(f"/api/v1/tasks/{tasks.pop(rng.randrange(len(tasks)))}", headers=headers)
        elif action == "entry":
            hour += 2
            resp = await client.post(
                "/api/v1/time-entries",
                json={"task_id": rng.choice(tasks), "started_at": _at(hour), "ended_at": _at(hour, 30)},
                headers=headers,
            )
            if resp.status_code == 201:
                entries.append(resp.json()["id"])
        elif action == "delete_entry" and entries:
            await client.delete(f"/api/v1/time-entries/{entries.pop(rng.randrange(len(entries)))}", headers=headers)
        elif action == "timer":
            await client.post("/api/v1/timer/start", json={"note": "n"}, headers=headers)


def _at(hour: int, minute: int = 0) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=hour, minutes=minute)).isoformat()


async def test_replaying_sync_pages_mirrors_the_server(client: httpx.AsyncClient) -> None:
    headers, _ = await new_user(client)
    other, _ = await new_user(client)
    await client.post("/api/v1/tasks", json={"title": "someone else's"}, headers=other)
    rng = random.Random(7)
    mirror = Mirror()
    await mirror.pull(client, headers)
    assert mirror.rows == {kind: {} for kind in KINDS}

    for round_ in range(6):
        await random_writes(client, headers, rng, 25)
        # small pages: several pulls, cutoffs inside the stream of changes
        await mirror.pull(client, headers, limit=rng.choice([1, 3, 7, 500]))
        assert comparable(mirror.rows) == comparable(await server_state(client, headers)), f"round {round_}"
    assert mirror.pages > 6

    # a fresh client starting without a token gets the same picture (and no tombstones)
    fresh = Mirror()
    await fresh.pull(client, headers, limit=5)
    assert comparable(fresh.rows) == comparable(mirror.rows)
    assert sum(len(rows) for rows in fresh.rows.values()) > 0

    # nothing changed: the same token comes back with nothing in it
    resp = await client.get("/api/v1/sync", params={"token": mirror.token}, headers=headers)
    body = resp.json()
    assert body["token"] == mirror.token and not body["has_more"]
    assert all(body[kind] == [] and body["deleted"][kind] == [] for kind in KINDS)


async def test_sync_under_concurrent_writes_misses_nothing(client: httpx.AsyncClient) -> None:
    headers, _ = await new_user(client)
    mirror = Mirror()
    stop = asyncio.Event()

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            await random_writes(client, headers, rng, 3)

    writers = [asyncio.create_task(writer(seed)) for seed in range(3)]
    for _ in range(15):
        await mirror.pull(client, headers, limit=4)
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*writers)
    await mirror.pull(client, headers, limit=4)
    assert comparable(mirror.rows) == comparable(await server_state(client, headers))


async def test_deleting_a_project_sends_tombstones_for_its_tasks(client: httpx.AsyncClient) -> None:
    headers, _ = await new_user(client)
    project = (await client.post("/api/v1/projects", json={"name": "p"}, headers=headers)).json()
    ids = [
        (
            await client.post("/api/v1/tasks", json={"title": f"t{i}", "project_id": project["id"]}, headers=headers)
        ).json()["id"]
        for i in range(3)
    ]
    mirror = Mirror()
    await mirror.pull(client, headers)
    assert set(mirror.rows["tasks"]) == set(ids)
    token = mirror.token
    assert (await client.delete(f"/api/v1/projects/{project['id']}", headers=headers)).status_code == 204
    page = (await client.get("/api/v1/sync", params={"token": token}, headers=headers)).json()
    assert sorted(page["deleted"]["tasks"]) == sorted(ids)
    assert page["deleted"]["projects"] == [project["id"]]
    assert page["tasks"] == [] and page["projects"] == []


async def test_bad_and_future_tokens(client: httpx.AsyncClient) -> None:
    headers, _ = await new_user(client)
    resp = await client.get("/api/v1/sync", params={"token": "not-a-token"}, headers=headers)
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_sync_token"
    mirror = Mirror()
    await client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
    await mirror.pull(client, headers)
    # a token from a richer history than this server has (an older backup restored): start over
    from timetodo.sync.service import decode_token, encode_token

    ahead = encode_token(decode_token(mirror.token) + 10)
    resp = await client.get("/api/v1/sync", params={"token": ahead}, headers=headers)
    assert resp.status_code == 410 and resp.json()["error"] == "sync_reset_required"
    resp = await client.get("/api/v1/sync", params={"limit": 0}, headers=headers)
    assert resp.status_code == 422
    assert (await client.get("/api/v1/sync")).status_code == 401
