from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support import PASSWORD, unique_email


async def count_tasks(client: httpx.AsyncClient, auth: dict[str, str]) -> int:
    return len((await client.get("/api/v1/tasks?limit=200", headers=auth)).json()["results"])


async def test_repeat_returns_first_response_and_creates_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/api/v1/tasks", json={"title": "once"}, headers={**auth, **key})
    second = await client.post("/api/v1/tasks", json={"title": "once"}, headers={**auth, **key})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    assert await count_tasks(client, auth) == 1
    # a different key is a different request
    await client.post("/api/v1/tasks", json={"title": "once"}, headers={**auth, "Idempotency-Key": "other"})
    assert await count_tasks(client, auth) == 2


async def test_same_key_different_body_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    key = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
    assert (await client.post("/api/v1/tasks", json={"title": "a"}, headers={**auth, **key})).status_code == 201
    resp = await client.post("/api/v1/tasks", json={"title": "b"}, headers={**auth, **key})
    assert resp.status_code == 422 and resp.json()["error"] == "idempotency_conflict"
    assert await count_tasks(client, auth) == 1


async def test_concurrent_identical_requests_create_one(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    responses = await asyncio.gather(
        *(client.post("/api/v1/tasks", json={"title": "race"}, headers={**auth, **key}) for _ in range(6))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await count_tasks(client, auth) == 1


async def test_keys_are_per_user_and_errors_are_remembered(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    from tests.support import new_user

    other, _ = await new_user(client)
    key = {"Idempotency-Key": "shared-key-" + uuid.uuid4().hex}
    a = await client.post("/api/v1/tasks", json={"title": "mine"}, headers={**auth, **key})
    b = await client.post("/api/v1/tasks", json={"title": "mine"}, headers={**other, **key})
    assert a.json()["id"] != b.json()["id"]
    bad_key = {"Idempotency-Key": uuid.uuid4().hex}
    r1 = await client.post("/api/v1/tasks", json={"title": ""}, headers={**auth, **bad_key})
    r2 = await client.post("/api/v1/tasks", json={"title": ""}, headers={**auth, **bad_key})
    assert r1.status_code == r2.status_code == 422 and r1.json() == r2.json()


async def test_register_with_key_and_bad_key(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = {"email": unique_email(), "password": PASSWORD}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await client.post("/api/v1/auth/register", json=body, headers=key)
    again = await client.post("/api/v1/auth/register", json=body, headers=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    resp = await client.post(
        "/api/v1/tasks", json={"title": "x"}, headers={**auth, "Idempotency-Key": "bad key with spaces"}
    )
    assert resp.status_code == 422


async def test_large_upload_with_key_streams_and_replays(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = (await client.post("/api/v1/tasks", json={"title": "t"}, headers=auth)).json()
    content = b"z" * (2 * 1024 * 1024 + 17)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    url = f"/api/v1/tasks/{task['id']}/attachments"
    first = await client.post(url, files={"file": ("big.bin", content)}, headers={**auth, **key})
    second = await client.post(url, files={"file": ("big.bin", content)}, headers={**auth, **key})
    assert first.status_code == second.status_code == 201, first.text
    assert first.json()["id"] == second.json()["id"] and first.json()["size"] == len(content)
    listed = (await client.get(f"{url}", headers=auth)).json()
    assert len(listed) == 1
