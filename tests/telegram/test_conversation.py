"""Conversations with the bot through the webhook, in English and Russian, against the fake Bot API."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.fakes.telegram import FakeTelegram
from tests.telegram.conftest import SECRET, WEBHOOK, Chat, button


@pytest.fixture
def chat(bot_app: FastAPI, api: httpx.AsyncClient, fake_telegram: FakeTelegram) -> Chat:
    return Chat(bot_app, api, fake_telegram, "en")


@pytest.fixture
def ru_chat(bot_app: FastAPI, api: httpx.AsyncClient, fake_telegram: FakeTelegram) -> Chat:
    return Chat(bot_app, api, fake_telegram, "ru")


async def tasks_of(chat: Chat, **params: Any) -> list[dict[str, Any]]:
    response = await chat.api.get("/api/v1/tasks", headers=chat.headers, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


async def test_link_add_list_done_in_english(chat: Chat) -> None:
    assert "not linked" in await chat.reply("/today")
    await chat.link(timezone="Europe/Moscow")
    answers = await chat.say("/add Call mom tomorrow at 18:00 #family !1")
    assert len(answers) == 1
    text = answers[0]["text"]
    assert "Added: Call mom" in text and "18:00" in text and "#family (new)" in text and "Priority: 1" in text
    [task] = await tasks_of(chat)
    assert task["title"] == "Call mom" and task["priority"] == 1
    assert task["due"]["datetime"].endswith("18:00:00") and task["due"]["timezone"] == "Europe/Moscow"

    plain = await chat.reply("Buy milk today")  # plain text = /add
    assert "Added: Buy milk" in plain
    [listing] = await chat.say("/today")
    assert "1. Buy milk" in listing["text"]
    done = await chat.press(listing["message_id"], button(listing, "✅ 1"))
    assert "Done: Buy milk" in done
    assert [t["title"] for t in await tasks_of(chat, done=True)] == ["Buy milk"]


async def test_russian_conversation(ru_chat: Chat) -> None:
    chat = ru_chat
    assert "не привязан" in await chat.reply("/today")
    await chat.link(timezone="Europe/Moscow")
    assert "Язык: русский" in await chat.reply("/lang ru")
    answer = await chat.reply("Позвонить маме завтра в 18:00 #семья !1")
    assert "Добавлено: Позвонить маме" in answer and "#семья (новый)" in answer
    await chat.reply("Отчёт сегодня")
    listing = await chat.reply("/today")
    assert "1. Отчёт" in listing
    assert "Готово: Отчёт" in await chat.reply("/done 1")
    assert "нет задачи номер 7" in await chat.reply("/done 7")
    assert "Не знаю такой команды" in await chat.reply("/frobnicate")


class Socket:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_text(self, data: str) -> None:
        import json

        self.events.append(json.loads(data))


async def test_webhook_checks_the_secret_and_handles_each_update_once(chat: Chat) -> None:
    update = {"update_id": 990_001, **chat.fake.message_update(chat.chat_id, "/help")}
    for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
        response = await chat.api.post(WEBHOOK, json=update, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
    assert chat.sent() == []  # nothing was processed
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    first = await chat.api.post(WEBHOOK, json=update, headers=headers)
    again = await chat.api.post(WEBHOOK, json=update, headers=headers)  # Telegram redelivers
    await chat.app.state.telegram.drain()
    assert first.json() == {"ok": True} and again.json() == {"ok": True, "duplicate": True}
    assert len(chat.sent()) == 1 and "/today" in chat.sent()[0]["text"]
    bad = await chat.api.post(WEBHOOK, content=b"not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json"
    no_id = await chat.api.post(WEBHOOK, json={"message": {}}, headers=headers)
    assert no_id.status_code == 400


async def test_link_tokens_are_single_use_and_one_chat_per_user(chat: Chat, fake_telegram: FakeTelegram) -> None:
    await chat.link()
    other = Chat(chat.app, chat.api, fake_telegram, "en")
    assert "invalid, expired or already used" in await other.reply(f"/start {chat.token}")  # reused
    assert "invalid, expired or already used" in await other.reply("/start " + "x" * 43)  # never issued
    status = await chat.api.get("/api/v1/telegram/link", headers=chat.headers)
    assert status.json()["chat_id"] == chat.chat_id

    # a fresh link for the same user moves the link to the new chat
    response = await chat.api.post("/api/v1/telegram/link", headers=chat.headers)
    body = response.json()
    assert body["url"] == f"https://t.me/{fake_telegram.username}?start={body['token']}"
    assert len(body["token"]) <= 64 and body["command"] == f"/start {body['token']}"
    assert "Linked to" in await other.reply(body["command"])
    assert "not linked" in await chat.reply("/today")
    # a chat linked to one user cannot be taken by another user's token
    intruder = Chat(chat.app, chat.api, fake_telegram, "en")
    await intruder.link()
    token = (await chat.api.post("/api/v1/telegram/link", headers=intruder.headers)).json()["token"]
    assert "linked to another account" in await other.reply(f"/start {token}")
    # DELETE /telegram/link and /unlink undo it
    assert (await chat.api.delete("/api/v1/telegram/link", headers=chat.headers)).status_code == 204
    assert "not linked" in await other.reply("/today")
    assert "Unlinked" in await intruder.reply("/unlink")
    assert "not linked" in await intruder.reply("/list")


async def test_an_expired_link_token_is_refused(chat: Chat) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from timetodo.core.database import utcnow
    from timetodo.telegram.models import TelegramLinkToken
    from timetodo.telegram.service import hash_token

    await chat.link()
    token = (await chat.api.post("/api/v1/telegram/link", headers=chat.headers)).json()["token"]
    async with chat.app.state.sessionmaker() as session:
        await session.execute(
            update(TelegramLinkToken)
            .where(TelegramLinkToken.token_hash == hash_token(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    fresh = Chat(chat.app, chat.api, chat.fake, "en")
    assert "expired" in await fresh.reply(f"/start {token}")


async def test_bad_input_gets_a_clear_answer_and_changes_nothing(chat: Chat, fake_telegram: FakeTelegram) -> None:
    await chat.link()
    assert "don't know this command" in await chat.reply("/frobnicate")
    assert "too long" in await chat.reply("x" * 5000)
    assert await tasks_of(chat) == []
    assert "Usage: /done" in await chat.reply("/done")
    assert "no task number 1" in await chat.reply("/done 1")

    # someone else's task: numbers index the asker's own last list; buttons act as the chat's user
    other = Chat(chat.app, chat.api, fake_telegram, "en")
    await other.link()
    [added] = await other.say("/add Secret plan today")
    [their_task] = await tasks_of(other)
    foreign = button(added, "✅")
    assert "Task not found" in await chat.press(added["message_id"], foreign, chat_id=chat.chat_id)
    assert (await tasks_of(other))[0]["done"] is False
    assert "expired" in await chat.press(added["message_id"], "0:d:" + str(their_task["id"]))  # an old version
    assert "no timer" in (await chat.reply("/timer")).lower()


async def test_timer_report_and_settings(chat: Chat) -> None:
    await chat.link()
    await chat.say("Write the report today")
    await chat.say("/list")
    assert "Timer started: Write the report" in await chat.reply("/timer start 1")
    assert "Running: Write the report" in await chat.reply("/timer")
    assert "Timer stopped: Write the report" in await chat.reply("/timer stop")
    assert "No timer is running" in await chat.reply("/timer stop")
    from datetime import UTC, datetime, timedelta

    [task] = await tasks_of(chat)
    end = datetime.now(UTC) - timedelta(minutes=1)
    entry = {
        "task_id": task["id"],
        "started_at": (end - timedelta(minutes=61)).isoformat(),
        "ended_at": end.isoformat(),
    }
    assert (await chat.api.post("/api/v1/time-entries", json=entry, headers=chat.headers)).status_code == 201
    report = await chat.reply("/report month")
    assert report.startswith("Time from") and "• Write the report: 1 h 01 min" in report
    assert "Usage: /report" in await chat.reply("/report decade")
    assert "Unknown time zone" in await chat.reply("/tz Mars/Olympus")
    assert "Time zone: Asia/Tokyo" in await chat.reply("/tz Asia/Tokyo")
    me = (await chat.api.get("/api/v1/users/me", headers=chat.headers)).json()
    assert me["timezone"] == "Asia/Tokyo"
    assert "Daily digest at 08:30" in await chat.reply("/digest 08:30")
    assert "Usage: /digest" in await chat.reply("/digest 25:99")


async def test_buttons_move_the_due_and_events_reach_the_websocket(chat: Chat) -> None:
    await chat.link(timezone="Europe/Moscow")
    me = (await chat.api.get("/api/v1/users/me", headers=chat.headers)).json()
    socket = Socket()
    await chat.app.state.events.add(me["id"], socket)
    try:
        [added] = await chat.say("Pay bills 2030-01-10 at 10:00")
        assert "Pay bills → 2030-01-11 10:00" in await chat.press(added["message_id"], button(added, "Tomorrow"))
        [task] = await tasks_of(chat)
        assert task["due"]["datetime"].startswith("2030-01-11T10:00")
        await chat.press(added["message_id"], button(added, "+1 h"))
        [task] = await tasks_of(chat)
        assert task["due"]["datetime"].startswith("2030-01-11T11:00")
        await chat.press(added["message_id"], button(added, "✅"))
        import asyncio

        for _ in range(50):
            if any(e["type"] == "task.completed" for e in socket.events):
                break
            await asyncio.sleep(0.05)
        kinds = [e["type"] for e in socket.events]
        assert kinds[0] == "task.created" and kinds.count("task.updated") == 2 and "task.completed" in kinds
    finally:
        chat.app.state.events.remove(me["id"], socket)


async def test_maintenance_mode_refuses_writes_from_the_bot(chat: Chat) -> None:
    from timetodo.core.maintenance import set_maintenance

    await chat.link()
    async with chat.app.state.sessionmaker() as session:
        await set_maintenance(session, True, "test")
    try:
        update = {"update_id": 991_001, **chat.fake.message_update(chat.chat_id, "Buy milk")}
        response = await chat.api.post(WEBHOOK, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert response.status_code == 503  # Telegram keeps the update and delivers it again later
    finally:
        async with chat.app.state.sessionmaker() as session:
            await set_maintenance(session, False)
    assert await tasks_of(chat) == []


async def test_lists_pages_reply_done_and_projects(chat: Chat) -> None:
    await chat.link(timezone="UTC")
    for n in range(12):
        await chat.say(f"/add Chore {n:02d} today #home")
    await chat.say("/add Overdue thing 2020-01-01")
    await chat.say("/add Later thing in 3 days")
    [today] = await chat.say("/today")
    lines = today["text"].splitlines()
    assert lines[1] == "1. Overdue thing · 2020-01-01" and "Page 1" in today["text"]
    more = button(today, "More")
    await chat.press(today["message_id"], more)
    page_two = chat.fake.message(chat.chat_id, today["message_id"])
    assert page_two is not None and "11. Chore 09" in page_two["text"] and "13. Chore 11" in page_two["text"]
    assert "1. Overdue thing" in (await chat.reply("/overdue"))
    [week] = await chat.say("/week")
    assert "1. Chore 00" in week["text"] and "Overdue thing" not in week["text"]
    await chat.press(week["message_id"], button(week, "More"))
    week_two = chat.fake.message(chat.chat_id, week["message_id"])
    assert week_two is not None and "13. Later thing" in week_two["text"]
    home = await chat.reply("/list #home")
    assert home.startswith("Open tasks in #home:") and "Later thing" not in home
    assert "There is no project #nowhere" in await chat.reply("/list #nowhere")

    [added] = await chat.say("/add Reply to me")
    [answer] = await chat.say("/done", reply_to=added["message_id"])
    assert "Done: Reply to me" in answer["text"]
    [listing] = await chat.say("/list")  # numbering follows the last list shown
    assert listing["text"].splitlines()[1] == "1. Overdue thing · 2020-01-01"
    assert "Done: Overdue thing" in await chat.reply("/done 1")


async def test_a_daily_digest_is_queued_once_per_day(chat: Chat) -> None:
    from datetime import UTC, datetime

    runtime = chat.app.state.telegram
    await chat.link(timezone="UTC")
    await chat.say("Digest item today")
    assert "Daily digest at 00:00" in await chat.reply("/digest 00:00")
    now = datetime.now(UTC)
    assert await runtime.queue_digests(now) >= 1  # (other chats of this app may be due too)
    assert await runtime.queue_digests(now) == 0  # once per local day
    await runtime.send_due()  # (or the background sender, if it claimed the row first: wait for the message)

    def digests() -> list[dict[str, Any]]:
        return [m for m in chat.sent() if m["text"].startswith("Good morning")]

    for _ in range(100):
        if digests():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a second one would show up now
    assert len(digests()) == 1 and "Digest item" in digests()[0]["text"]
    assert "Daily digest is off" in await chat.reply("/digest off")


async def test_linking_while_telegram_is_unreachable_is_a_503(tmp_path_factory: Any) -> None:
    import socket

    from tests.conftest import asgi_client, make_settings, running_app
    from tests.support import new_user
    from tests.telegram.conftest import TOKEN

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tmp = tmp_path_factory.mktemp("unreachable")
    settings = make_settings(
        tmp,
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite'}",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE=f"http://127.0.0.1:{port}",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
    )
    from timetodo.core.schema import upgrade_async

    await upgrade_async(settings.DATABASE_URL)
    async with running_app(settings) as app, asgi_client(app) as api:
        headers, _ = await new_user(api)
        response = await api.post("/api/v1/telegram/link", headers=headers)
        assert response.status_code == 503 and response.json()["error"] == "service_unavailable"
        assert response.headers["Retry-After"] == "30"


async def test_open_button_shows_the_whole_task_with_its_buttons(chat: Chat, ru_chat: Chat) -> None:
    await chat.link(timezone="UTC")
    [added] = await chat.say("/add Pay rent every month on the 1st #flat !1")
    task_id = int(button(added, "✅").split(":")[2])
    async with chat.app.state.sessionmaker() as session:
        from timetodo.tasks.models import Task

        task = await session.get(Task, task_id)
        assert task is not None
        task.description = "IBAN on the fridge"
        await session.commit()
    [listing] = await chat.say("/list")
    before = {m["message_id"] for m in chat.sent()}
    assert await chat.press(listing["message_id"], button(listing, "🔎 1")) == ""
    [card] = [m for m in chat.sent() if m["message_id"] not in before]
    lines = card["text"].splitlines()
    assert lines[0] == "Pay rent" and "Project: #flat" in lines and "Priority: 1" in lines
    assert any(line.startswith("Repeats: FREQ=MONTHLY") for line in lines) and lines[-1] == "IBAN on the fridge"
    assert "Done: Pay rent" in await chat.press(card["message_id"], button(card, "✅ Done"))
    # someone else's task: "not found", nothing shown
    await ru_chat.link()
    before_ru = len(ru_chat.sent())
    other = await ru_chat.press(listing["message_id"], f"1:o:{task_id}", chat_id=ru_chat.chat_id)
    assert other == "Task not found." and len(ru_chat.sent()) == before_ru  # (the account's locale is en)
