from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx

from tests.support import new_user


async def entry(
    client: httpx.AsyncClient, auth: dict[str, str], start: str, end: str, **extra: object
) -> httpx.Response:
    return await client.post("/api/v1/time-entries", json={"started_at": start, "ended_at": end, **extra}, headers=auth)


async def test_timer_start_stop(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    project = (await client.post("/api/v1/projects", json={"name": "Work"}, headers=auth)).json()
    task = (await client.post("/api/v1/tasks", json={"title": "t", "project_id": project["id"]}, headers=auth)).json()
    assert (await client.get("/api/v1/timer", headers=auth)).json() == {"running": None}
    resp = await client.post("/api/v1/timer/stop", headers=auth)
    assert resp.status_code == 409 and resp.json()["error"] == "timer_not_running"

    first = (await client.post("/api/v1/timer/start", json={"task_id": task["id"], "note": "n"}, headers=auth)).json()
    assert first["running"] is True and first["project_id"] == project["id"]
    running = (await client.get("/api/v1/timer", headers=auth)).json()["running"]
    assert running["id"] == first["id"]
    # starting another stops the first
    second = (await client.post("/api/v1/timer/start", json={}, headers=auth)).json()
    stopped_first = (await client.get(f"/api/v1/time-entries/{first['id']}", headers=auth)).json()
    assert stopped_first["running"] is False and stopped_first["ended_at"] is not None
    assert (await client.get("/api/v1/timer", headers=auth)).json()["running"]["id"] == second["id"]
    stopped = (await client.post("/api/v1/timer/stop", headers=auth)).json()
    assert stopped["id"] == second["id"] and stopped["running"] is False
    assert (await client.get("/api/v1/timer", headers=auth)).json() == {"running": None}


async def test_time_entries_validation(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    ok = await entry(client, auth, "2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")
    assert ok.status_code == 201 and ok.json()["duration_seconds"] == 3600
    # ends before it starts
    bad = await entry(client, auth, "2026-11-20T12:00:00Z", "2026-11-20T11:00:00Z")
    assert bad.status_code == 422 and bad.json()["error"] == "validation_error"
    # naive datetimes are ambiguous
    bad = await entry(client, auth, "2026-11-20T12:00:00", "2026-11-20T13:00:00")
    assert bad.status_code == 422
    # overlap, including partial and enclosing ones; touching is fine
    for start, end in [("09:30", "10:30"), ("08:00", "11:00"), ("09:10", "09:20")]:
        resp = await entry(client, auth, f"2026-11-20T{start}:00Z", f"2026-11-20T{end}:00Z")
        assert resp.status_code == 409 and resp.json()["error"] == "time_entry_overlap", resp.text
        assert str(ok.json()["id"]) in resp.json()["detail"]
    touching = await entry(client, auth, "2026-11-20T10:00:00Z", "2026-11-20T11:00:00Z")
    assert touching.status_code == 201
    # moving an entry onto another is refused; nothing changed
    resp = await client.patch(
        f"/api/v1/time-entries/{touching.json()['id']}", json={"started_at": "2026-11-20T09:59:00Z"}, headers=auth
    )
    assert resp.status_code == 409
    assert (await client.get(f"/api/v1/time-entries/{touching.json()['id']}", headers=auth)).json() == touching.json()
    # an unknown task is a field error
    resp = await entry(client, auth, "2026-11-21T09:00:00Z", "2026-11-21T10:00:00Z", task_id=987654321)
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "task_id"
    # a timer started now overlaps nothing in the past
    assert (await client.post("/api/v1/timer/start", json={}, headers=auth)).status_code == 201
    await client.post("/api/v1/timer/stop", headers=auth)


async def test_time_entries_other_user_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    mine = (await entry(client, auth, "2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")).json()
    other, _ = await new_user(client)
    for method in ("GET", "PATCH", "DELETE"):
        resp = await client.request(
            method,
            f"/api/v1/time-entries/{mine['id']}",
            json={"note": "x"} if method == "PATCH" else None,
            headers=other,
        )
        assert resp.status_code == 404
    # another user's entries do not count as overlaps
    assert (await entry(client, other, "2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")).status_code == 201
    assert (await client.delete(f"/api/v1/time-entries/{mine['id']}", headers=auth)).status_code == 204
    assert (await entry(client, auth, "2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")).status_code == 201


async def test_report_splits_across_midnight_in_user_zone(client: httpx.AsyncClient) -> None:
    auth, _ = await new_user(client, timezone="Europe/Moscow")  # UTC+3, no DST
    task = (
        await client.post("/api/v1/tasks", json={"title": "Deep work", "estimate_minutes": 240}, headers=auth)
    ).json()
    # 22:00–02:00 Moscow time = 19:00–23:00 UTC on the 20th: 2 h on the 20th, 2 h on the 21st (Moscow days)
    assert (
        await entry(client, auth, "2026-11-20T19:00:00Z", "2026-11-20T23:00:00Z", task_id=task["id"])
    ).status_code == 201
    assert (await entry(client, auth, "2026-11-22T06:00:00Z", "2026-11-22T06:30:00Z")).status_code == 201
    report = (await client.get("/api/v1/reports/time?from=2026-11-20&to=2026-11-22&group_by=day", headers=auth)).json()
    assert report["timezone"] == "Europe/Moscow"
    assert [(g["key"], g["seconds"]) for g in report["groups"]] == [
        ("2026-11-20", 7200),
        ("2026-11-21", 7200),
        ("2026-11-22", 1800),
    ]
    assert report["total_seconds"] == 16200
    # the range edge clips: only the 21st
    one_day = (await client.get("/api/v1/reports/time?from=2026-11-21&to=2026-11-21", headers=auth)).json()
    assert one_day["total_seconds"] == 7200
    by_task = (
        await client.get("/api/v1/reports/time?from=2026-11-20&to=2026-11-22&group_by=task", headers=auth)
    ).json()
    assert by_task["groups"][0] == {"key": task["id"], "label": "Deep work", "seconds": 14400, "estimate_minutes": 240}
    assert by_task["groups"][1]["label"] == "(no task)"
    csv_resp = await client.get(
        "/api/v1/reports/time?from=2026-11-20&to=2026-11-22&group_by=task&format=csv", headers=auth
    )
    assert csv_resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(csv_resp.text)))
    assert rows[0] == ["task", "label", "seconds", "hours", "estimate_minutes"]
    assert rows[1] == [str(task["id"]), "Deep work", "14400", "4.00", "240"]
    assert rows[-1][0] == "total" and rows[-1][2] == "16200"


async def test_report_across_dst_change(client: httpx.AsyncClient) -> None:
    """Berlin leaves DST on 2026-10-25: that local day has 25 hours."""
    auth, _ = await new_user(client, timezone="Europe/Berlin")
    # 2026-10-24 22:00 UTC = 2026-10-25 00:00 CEST; to 2026-10-25 23:00 UTC = 2026-10-26 00:00 CET
    assert (await entry(client, auth, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z")).status_code == 201
    report = (await client.get("/api/v1/reports/time?from=2026-10-24&to=2026-10-26", headers=auth)).json()
    assert [(g["key"], g["seconds"]) for g in report["groups"]] == [
        ("2026-10-24", 0),
        ("2026-10-25", 25 * 3600),
        ("2026-10-26", 0),
    ]


async def test_report_bad_input(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for query in [
        "from=2026-11-22&to=2026-11-20",
        "from=2026-01-01&to=2027-06-01",
        "from=x&to=2026-01-01",
        "to=2026-01-01",
        "from=2026-01-01&to=2026-01-02&group_by=week",
    ]:
        resp = await client.get(f"/api/v1/reports/time?{query}", headers=auth)
        assert resp.status_code == 422, (query, resp.text)
        assert resp.json()["error"] == "validation_error"


async def test_running_entry_counts_until_now(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    started = (await client.post("/api/v1/timer/start", json={}, headers=auth)).json()
    assert started["duration_seconds"] >= 0
    today = datetime.now(UTC).date()
    report = (
        await client.get(
            f"/api/v1/reports/time?from={today - timedelta(days=1)}&to={today + timedelta(days=1)}", headers=auth
        )
    ).json()
    assert report["total_seconds"] >= 0
    await client.post("/api/v1/timer/stop", headers=auth)
