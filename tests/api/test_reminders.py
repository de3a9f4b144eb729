from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from tests.support import new_user
from timetodo.reminders.models import Reminder
from timetodo.reminders.service import claim_due


async def make_task(client: httpx.AsyncClient, auth: dict[str, str], **fields: object) -> dict[str, object]:
    return dict((await client.post("/api/v1/tasks", json={"title": "r", **fields}, headers=auth)).json())


async def test_reminder_crud_and_relative_reschedule(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = await make_task(client, auth, due={"datetime": "2099-05-01T10:00:00", "timezone": "Europe/Moscow"})
    url = f"/api/v1/tasks/{task['id']}/reminders"
    rel = (await client.post(url, json={"minutes_before": 30}, headers=auth)).json()
    assert rel["fire_at"] == "2099-05-01T06:30:00Z" and rel["state"] == "scheduled"
    absolute = (await client.post(url, json={"remind_at": "2099-04-30T12:00:00+00:00"}, headers=auth)).json()
    assert absolute["fire_at"] == "2099-04-30T12:00:00Z"
    # moving the due moves the relative reminder, not the absolute one
    await client.patch(
        f"/api/v1/tasks/{task['id']}",
        json={"due": {"datetime": "2099-05-02T10:00:00", "timezone": "UTC"}},
        headers=auth,
    )
    listed = {r["id"]: r for r in (await client.get(url, headers=auth)).json()}
    assert listed[rel["id"]]["fire_at"] == "2099-05-02T09:30:00Z"
    assert listed[absolute["id"]]["fire_at"] == "2099-04-30T12:00:00Z"
    snoozed = (
        await client.post(f"/api/v1/reminders/{absolute['id']}/snooze", json={"minutes": 15}, headers=auth)
    ).json()
    assert snoozed["state"] == "snoozed"
    dismissed = (await client.post(f"/api/v1/reminders/{absolute['id']}/dismiss", headers=auth)).json()
    assert dismissed["state"] == "dismissed"
    other, _ = await new_user(client)
    assert (await client.post(f"/api/v1/reminders/{rel['id']}/dismiss", headers=other)).status_code == 404
    assert (await client.post(url, json={"minutes_before": 5}, headers=other)).status_code == 404
    assert (await client.delete(f"/api/v1/reminders/{rel['id']}", headers=auth)).status_code == 204
    assert [r["id"] for r in (await client.get(url, headers=auth)).json()] == [absolute["id"]]


async def test_reminder_bad_input(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    no_due = await make_task(client, auth)
    url = f"/api/v1/tasks/{no_due['id']}/reminders"
    for body in (
        {},
        {"minutes_before": 5, "remind_at": "2099-01-01T00:00:00Z"},
        {"minutes_before": -1},
        {"remind_at": "2099-01-01T00:00:00"},
    ):
        resp = await client.post(url, json=body, headers=auth)
        assert resp.status_code == 422, (body, resp.text)
    resp = await client.post(url, json={"minutes_before": 5}, headers=auth)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "minutes_before"
    series = await make_task(
        client, auth, due={"date": "2099-01-01", "recurrence": {"rule": "FREQ=DAILY;UNTIL=20990110"}}
    )
    resp = await client.post(
        f"/api/v1/tasks/{series['id']}/reminders", json={"remind_at": "2099-02-01T09:00:00Z"}, headers=auth
    )
    assert resp.status_code == 422 and "UNTIL" in resp.json()["detail"][0]["message"]
    assert (await client.get(url, headers=auth)).json() == []


async def test_concurrent_schedulers_claim_each_reminder_once(
    app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str], settings: object
) -> None:
    """Four scheduler ticks race on the same due reminders: every reminder is fired by exactly one of them."""
    task = await make_task(client, auth, due={"date": "2150-01-01"})
    created = []
    for i in range(60):
        resp = await client.post(
            f"/api/v1/tasks/{task['id']}/reminders",
            json={"remind_at": (datetime(2150, 1, 1, tzinfo=UTC) - timedelta(minutes=i)).isoformat()},
            headers=auth,
        )
        created.append(resp.json()["id"])
    far_future = datetime(2151, 1, 1, tzinfo=UTC)

    async def tick() -> list[int]:
        ids: list[int] = []
        while True:
            async with app.state.sessionmaker() as session:
                got = await claim_due(session, 5, now=far_future)
            got_ids = [g["id"] for g in got if g["id"] in created]
            if not got:
                return ids
            ids += got_ids
            await asyncio.sleep(0)

    results = await asyncio.gather(*(tick() for _ in range(4)))
    fired = [i for r in results for i in r]
    assert sorted(fired) == sorted(created)  # each once, none lost
    async with app.state.sessionmaker() as session:
        states = (await session.execute(select(Reminder.state).where(Reminder.id.in_(created)))).scalars().all()
    assert set(states) == {"sent"}


async def test_reminders_of_deleted_tasks_never_fire(
    app: FastAPI, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Deleting a task (directly, as a subtask, or with its project) dismisses its pending reminders, and the
    scheduler skips reminders of deleted tasks even when one was left scheduled (rows from before this rule)."""
    project = (await client.post("/api/v1/projects", json={"name": "gone"}, headers=auth)).json()
    due = {"date": "2160-01-01"}
    parent = await make_task(client, auth, due=due)
    child = await make_task(client, auth, due=due, parent_id=parent["id"])
    in_project = await make_task(client, auth, due=due, project_id=project["id"])
    kept = await make_task(client, auth, due=due)
    ids = {}
    for task in (parent, child, in_project, kept):
        resp = await client.post(f"/api/v1/tasks/{task['id']}/reminders", json={"minutes_before": 60}, headers=auth)
        ids[task["id"]] = resp.json()["id"]
    assert (await client.delete(f"/api/v1/tasks/{parent['id']}", headers=auth)).status_code == 204
    assert (await client.delete(f"/api/v1/projects/{project['id']}", headers=auth)).status_code == 204
    gone = [ids[parent["id"]], ids[child["id"]], ids[in_project["id"]]]
    async with app.state.sessionmaker() as session:
        rows = (await session.execute(select(Reminder.id, Reminder.state).where(Reminder.id.in_(ids.values())))).all()
        states = dict(rows)
        assert [states[i] for i in gone] == ["dismissed"] * 3
        assert states[ids[kept["id"]]] == "scheduled"
        # a reminder of a deleted task left scheduled (data written before the rule) is skipped by the claim
        await session.execute(update(Reminder).where(Reminder.id == gone[0]).values(state="scheduled"))
        await session.commit()
    async with app.state.sessionmaker() as session:
        fired = {r["id"] for r in await claim_due(session, 5, now=datetime(2161, 1, 1, tzinfo=UTC))}
    assert ids[kept["id"]] in fired
    assert fired.isdisjoint(gone)
