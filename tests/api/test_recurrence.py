from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support import new_user
from timetodo.tasks.recurrence import RuleError, next_occurrence, parse_rule


async def create(client: httpx.AsyncClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/tasks", json={"title": "r", **fields}, headers=auth)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_weekly_recurrence_from_due_keeps_wall_clock_across_dst(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # Mondays 18:00 Berlin; 2026-10-19 is a Monday before the DST change on 2026-10-25
    task = await create(
        client,
        auth,
        due={
            "datetime": "2026-10-19T18:00:00",
            "timezone": "Europe/Berlin",
            "recurrence": {"rule": "FREQ=WEEKLY;BYDAY=MO"},
        },
    )
    assert task["due"]["recurrence"] == {"rule": "FREQ=WEEKLY;BYDAY=MO", "mode": "from_due"}
    done = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    assert done["done"] is False
    assert done["due"]["datetime"] == "2026-10-26T18:00:00" and done["due"]["timezone"] == "Europe/Berlin"
    again = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    assert again["due"]["datetime"] == "2026-11-02T18:00:00"
    completions = (await client.get(f"/api/v1/tasks/{task['id']}/completions", headers=auth)).json()
    assert [c["due_datetime"] for c in completions] == ["2026-10-19T18:00:00", "2026-10-26T18:00:00"]
    # "overdue" for a Berlin 18:00 due works on the UTC instant: 17:00 UTC in winter
    listed = (await client.get("/api/v1/tasks?overdue=true&limit=200", headers=auth)).json()["results"]
    assert task["id"] in [t["id"] for t in listed]


async def test_count_ends_the_series(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = await create(
        client, auth, due={"date": "2026-01-30", "recurrence": {"rule": "FREQ=MONTHLY;BYMONTHDAY=-1;COUNT=2"}}
    )
    first = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    # 01-30 is not a last day of a month: the series is 01-31, 02-28 (COUNT=2)
    assert first["due"]["date"] == "2026-01-31" and first["done"] is False
    second = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    assert second["due"]["date"] == "2026-02-28" and second["done"] is False
    third = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    assert third["done"] is True and third["done_at"] is not None
    assert len((await client.get(f"/api/v1/tasks/{task['id']}/completions", headers=auth)).json()) == 3


async def test_from_completion_mode(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task = await create(
        client,
        auth,
        due={"date": "2020-01-01", "recurrence": {"rule": "FREQ=DAILY;INTERVAL=3", "mode": "from_completion"}},
    )
    done = (await client.post(f"/api/v1/tasks/{task['id']}/complete", headers=auth)).json()
    today = datetime.now(UTC).date()  # the user is in UTC
    assert done["due"]["date"] == (today + timedelta(days=3)).isoformat()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("FREQ=HOURLY", "FREQ must be"),
        ("FREQ=DAILY;BYDAY=MO", "BYDAY is supported with FREQ=WEEKLY only"),
        ("FREQ=WEEKLY;BYDAY=XX", "BYDAY values"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY values"),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101", "not both"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL"),
        ("FREQ=DAILY;UNTIL=20261399", "UNTIL"),
        ("FREQ=DAILY;BYSETPOS=1", "unsupported"),
        ("garbage", "KEY=VALUE"),
    ],
)
async def test_invalid_rules_are_422(client: httpx.AsyncClient, auth: dict[str, str], rule: str, message: str) -> None:
    resp = await client.post(
        "/api/v1/tasks", json={"title": "x", "due": {"date": "2026-01-01", "recurrence": {"rule": rule}}}, headers=auth
    )
    assert resp.status_code == 422, resp.text
    err = resp.json()["detail"][0]
    assert err["field"] == "due.recurrence.rule" and message in err["message"], err


def test_rule_parser_and_next_occurrence() -> None:
    rule = parse_rule("FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;UNTIL=20261231")
    anchor = datetime(2026, 11, 2, 9, 0)  # Monday
    assert next_occurrence(rule, anchor, anchor, anchor, "from_due") == datetime(2026, 11, 6, 9, 0)
    assert next_occurrence(rule, anchor, datetime(2026, 12, 28, 9, 0), anchor, "from_due") is None
    with pytest.raises(RuleError):
        parse_rule("")
    yearly = parse_rule("FREQ=YEARLY")
    leap = datetime(2028, 2, 29)
    assert next_occurrence(yearly, leap, leap, leap, "from_due") == datetime(2032, 2, 29)


async def test_filters_combine(client: httpx.AsyncClient) -> None:
    auth, _ = await new_user(client, timezone="Asia/Tokyo")
    zone = ZoneInfo("Asia/Tokyo")
    local_today = datetime.now(zone).date()
    yesterday = (local_today - timedelta(days=1)).isoformat()
    today = local_today.isoformat()
    tomorrow = (local_today + timedelta(days=1)).isoformat()
    late = await create(client, auth, title="late", labels=["home"], due={"date": yesterday})
    now_due = await create(client, auth, title="today", labels=["work", "home"], due={"date": today})
    later = await create(client, auth, title="later", labels=["work"], due={"date": tomorrow})
    nodue = await create(client, auth, title="no due", labels=["home"])
    past_instant = (datetime.now(UTC) - timedelta(minutes=5)).astimezone(zone).replace(tzinfo=None)
    just_missed = await create(
        client,
        auth,
        title="just missed",
        due={"datetime": past_instant.isoformat(timespec="seconds"), "timezone": "Asia/Tokyo"},
    )
    done_late = await create(client, auth, title="done", due={"date": yesterday})
    await client.post(f"/api/v1/tasks/{done_late['id']}/complete", headers=auth)

    async def ids(query: str) -> set[int]:
        resp = await client.get(f"/api/v1/tasks?limit=200&{query}", headers=auth)
        assert resp.status_code == 200, resp.text
        return {t["id"] for t in resp.json()["results"]}

    assert await ids("label=home") == {late["id"], now_due["id"], nodue["id"]}
    assert await ids("label=work&due_after=" + today) == {now_due["id"], later["id"]}
    assert await ids("overdue=true") == {late["id"], just_missed["id"]}
    expected_today = {now_due["id"]} | ({just_missed["id"]} if past_instant.date() == local_today else set())
    assert await ids("today=true") == expected_today
    assert await ids(f"due_before={yesterday}") == {late["id"], done_late["id"]}
    assert await ids("label=nothing") == set()
    # combined with pagination: one per page, still the same set
    seen: set[int] = set()
    cursor = None
    while True:
        page = (
            await client.get("/api/v1/tasks?limit=1&label=home" + (f"&cursor={cursor}" if cursor else ""), headers=auth)
        ).json()
        seen |= {t["id"] for t in page["results"]}
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == {late["id"], now_due["id"], nodue["id"]}
