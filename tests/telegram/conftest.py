"""Fixtures for the bot: the fake Bot API on 127.0.0.1, an app pointed at it, and `Chat`, a user talking to the bot
through the real webhook (secret header and all) and reading what the bot sent back from the fake."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import asgi_client, backend_settings, running_app
from tests.fakes.telegram import FakeTelegram
from tests.support import new_user
from timetodo.core.settings import Settings

TOKEN = "123456789:AAH-test-token-for-the-fake-bot-api_0"
SECRET = "test-webhook-secret_0123456789"
WEBHOOK = "/api/v1/telegram/webhook"
_update_ids = itertools.count(1000)
_chat_ids = itertools.count(7_000_001)


@pytest.fixture(scope="session")
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(TOKEN) as fake:
        yield fake


def bot_overrides(fake: FakeTelegram, **extra: Any) -> dict[str, Any]:
    return {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE": fake.base_url,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "REMINDER_POLL_SECONDS": 0.2,
        "TELEGRAM_CHAT_RATE": 100.0,  # the limiter has tests of its own; conversations need not wait
        "TELEGRAM_GLOBAL_RATE": 1000.0,
        **extra,
    }


@pytest.fixture(scope="session")
async def bot_settings(
    backend: str, fake_telegram: FakeTelegram, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Settings:
    tmp = tmp_path_factory.mktemp(f"bot-{backend}")
    return await backend_settings(
        backend, tmp, lambda: request.getfixturevalue("services"), **bot_overrides(fake_telegram)
    )


@pytest.fixture(scope="session")
async def bot_app(bot_settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(bot_settings) as application:
        yield application


@pytest.fixture
async def api(bot_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(bot_app) as c:
        yield c


class Chat:
    """One Telegram user in a private chat with the bot."""

    def __init__(
        self, app: FastAPI, api: httpx.AsyncClient, fake: FakeTelegram, language: str = "en", chat_id: int | None = None
    ) -> None:
        self.app, self.api, self.fake = app, api, fake
        self.language = language
        self.chat_id = chat_id or next(_chat_ids)
        self.headers: dict[str, str] = {}

    async def post(self, update: dict[str, Any]) -> httpx.Response:
        update = {"update_id": next(_update_ids), **update}
        response = await self.api.post(WEBHOOK, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        await self.app.state.telegram.drain()
        return response

    def sent(self) -> list[dict[str, Any]]:
        return self.fake.sent_messages(self.chat_id)

    async def say(self, text: str, reply_to: int | None = None) -> list[dict[str, Any]]:
        """Send a message; returns the bot's new messages in this chat."""
        before = {m["message_id"] for m in self.sent()}
        update = self.fake.message_update(self.chat_id, text, language_code=self.language, reply_to=reply_to)
        response = await self.post(update)
        assert response.status_code == 200, response.text
        return [m for m in self.sent() if m["message_id"] not in before]

    async def reply(self, text: str) -> str:
        """Send a message and return the text of the single answer."""
        answers = await self.say(text)
        assert len(answers) == 1, answers
        return str(answers[0]["text"])

    async def press(self, message_id: int, data: str, chat_id: int | None = None) -> str:
        """Press a button; returns the callback's answer text."""
        count = len(self.fake.answered_callbacks)
        update = self.fake.callback_update(
            chat_id or self.chat_id, message_id, data, user_id=self.chat_id, language_code=self.language
        )
        response = await self.post(update)
        assert response.status_code == 200, response.text
        answers = self.fake.answered_callbacks[count:]
        assert len(answers) == 1, answers
        return str(answers[0]["text"])

    async def link(self, **user: Any) -> dict[str, str]:
        """Register an account, ask the API for a link and /start it here."""
        self.headers, _ = await new_user(self.api, **user)
        response = await self.api.post("/api/v1/telegram/link", headers=self.headers)
        assert response.status_code == 201, response.text
        self.token = response.json()["token"]
        answer = await self.reply(f"/start {self.token}")
        assert "@" in answer, answer
        return self.headers


def button(message: dict[str, Any], label_start: str) -> str:
    """The callback data of the first button of `message` whose label starts with `label_start`."""
    for row in message.get("reply_markup", {}).get("inline_keyboard", []):
        for item in row:
            if item["text"].startswith(label_start):
                return str(item["callback_data"])
    raise AssertionError(f"no button {label_start!r} in {message.get('reply_markup')}")


def tmp_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)
