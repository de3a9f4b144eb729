"""Reminders reach the linked chat with their buttons; 429 is waited out, 403 unlinks, failures are retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from tests.fakes.telegram import FakeTelegram
from tests.telegram.conftest import Chat, button


@pytest.fixture
def chat(bot_app: FastAPI, api: httpx.AsyncClient, fake_telegram: FakeTelegram) -> Chat:
    return Chat(bot_app, api, fake_telegram, "en")


def metric(kind: str, result: str) -> float:
    return REGISTRY.get_sample_value("timetodo_telegram_messages_total", {"kind": kind, "result": result}) or 0.0


async def wait_for(predicate: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


async def remind_now(chat: Chat, title: str) -> tuple[dict[str, Any], dict[str, Any]]:
    task = (await chat.api.post("/api/v1/tasks", json={"title": title}, headers=chat.headers)).json()
    at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    response = await chat.api.post(
        f"/api/v1/tasks/{task['id']}/reminders", json={"remind_at": at}, headers=chat.headers
    )
    assert response.status_code == 201, response.text
    return task, response.json()


def reminders_in(chat: Chat, title: str) -> list[dict[str, Any]]:
    return [m for m in chat.sent() if m["text"].startswith("⏰ Reminder: " + title)]


async def test_a_fired_reminder_arrives_once_with_its_buttons(chat: Chat) -> None:
    await chat.link()
    sent_before = metric("reminder", "sent")
    task, reminder = await remind_now(chat, "Stretch")
    [message] = await wait_for(lambda: reminders_in(chat, "Stretch"))
    labels = [b["text"] for row in message["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["✅ Done", "⏰ +15 min", "+1 h", "Tomorrow", "▶ Start timer"]
    await wait_for(lambda: metric("reminder", "sent") == sent_before + 1)  # counted once it is marked sent
    assert button(message, "⏰ +15") == f"1:r15:{reminder['id']}" and button(message, "✅") == f"1:d:{task['id']}"

    answer = await chat.press(message["message_id"], button(message, "⏰ +15"))
    assert "Reminding again at" in answer
    [again] = (await chat.api.get(f"/api/v1/tasks/{task['id']}/reminders", headers=chat.headers)).json()
    assert again["state"] == "snoozed"
    fire_at = datetime.fromisoformat(again["fire_at"])
    assert timedelta(minutes=14) < fire_at - datetime.now(UTC) <= timedelta(minutes=15)
    assert "Done: Stretch" in await chat.press(message["message_id"], button(message, "✅"))
    assert (await chat.api.get(f"/api/v1/tasks/{task['id']}", headers=chat.headers)).json()["done"] is True
    edited = chat.fake.message(chat.chat_id, message["message_id"])
    assert edited is not None and "reply_markup" not in edited and "Done: Stretch" in edited["text"]
    await asyncio.sleep(0.5)
    assert len(reminders_in(chat, "Stretch")) == 1  # once


async def test_retry_after_is_waited_out(chat: Chat, fake_telegram: FakeTelegram) -> None:
    await chat.link()
    throttled = fake_telegram.throttled
    fake_telegram.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    await remind_now(chat, "Hydrate")
    await wait_for(lambda: reminders_in(chat, "Hydrate"))
    assert fake_telegram.throttled == throttled + 1
    assert len(reminders_in(chat, "Hydrate")) == 1


async def test_failures_are_retried_with_backoff(chat: Chat, fake_telegram: FakeTelegram) -> None:
    await chat.link()
    retries = metric("reminder", "retry")
    fake_telegram.fail_next("sendMessage", 500, "Internal Server Error")
    await remind_now(chat, "Walk")
    await wait_for(lambda: reminders_in(chat, "Walk"), seconds=20)
    assert metric("reminder", "retry") == retries + 1  # counted before the retry could be sent


async def test_a_chat_that_blocked_the_bot_is_unlinked(chat: Chat, fake_telegram: FakeTelegram) -> None:
    await chat.link()
    blocked = metric("reminder", "blocked")
    fake_telegram.block_chat(chat.chat_id)
    try:
        await remind_now(chat, "Blocked")
        await wait_for(lambda: metric("reminder", "blocked") == blocked + 1)
        status = (await chat.api.get("/api/v1/telegram/link", headers=chat.headers)).json()
        assert status == {"linked": False, "chat_id": None, "linked_at": None}
    finally:
        fake_telegram.block_chat(chat.chat_id, False)


async def test_commands_are_set_in_both_languages(bot_app: FastAPI, fake_telegram: FakeTelegram) -> None:
    english = await wait_for(lambda: fake_telegram.commands(""))
    russian = await wait_for(lambda: fake_telegram.commands("ru"))
    assert [c["command"] for c in english] == [c["command"] for c in russian]
    # every command the bot handles is in the menu (but /start, which deep links send, and /ping, validate's probe)
    from timetodo.telegram.bot import LINKED_COMMANDS

    handled = {name for name, _ in LINKED_COMMANDS} | {"help"}
    assert {c["command"] for c in english} == handled
    assert all(c["description"] for c in english + russian)
    assert next(c for c in russian if c["command"] == "today")["description"] == "Сегодня и просроченные"
    assert fake_telegram.calls_to("setWebhook") == []  # the app never sets the webhook by itself
