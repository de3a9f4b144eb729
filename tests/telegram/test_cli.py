"""`timetodo telegram …` against the fake Bot API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fakes.telegram import FakeTelegram
from tests.telegram.conftest import SECRET, TOKEN
from timetodo.cli import app
from timetodo.core.schema import upgrade_async

runner = CliRunner()


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram(TOKEN) as started:
        yield started


def env(fake: FakeTelegram, tmp_path: Path, **extra: str) -> dict[str, str]:
    values = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE": fake.base_url,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "PUBLIC_BASE_URL": "https://todo.example.com",
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
    }
    values.update(extra)
    return values


def test_set_webhook_once_then_leaves_a_matching_one_alone(fake: FakeTelegram, tmp_path: Path) -> None:
    result = runner.invoke(app, ["telegram", "set-webhook"], env=env(fake, tmp_path))
    assert result.exit_code == 0, result.output
    assert "webhook set to https://todo.example.com/api/v1/telegram/webhook" in result.output
    assert fake.webhook_url == "https://todo.example.com/api/v1/telegram/webhook"
    assert fake.secret_token == SECRET and fake.allowed_updates == ["message", "callback_query"]
    again = runner.invoke(app, ["telegram", "set-webhook"], env=env(fake, tmp_path))
    assert again.exit_code == 0 and "already points at" in again.output
    assert len(fake.calls_to("setWebhook")) == 1  # the matching webhook was not set again
    forced = runner.invoke(app, ["telegram", "set-webhook", "--force"], env=env(fake, tmp_path))
    assert forced.exit_code == 0 and len(fake.calls_to("setWebhook")) == 2
    assert TOKEN not in result.output + again.output + forced.output

    fake.enqueue_update(fake.message_update(1, "hi"))
    info = runner.invoke(app, ["telegram", "webhook-info"], env=env(fake, tmp_path))
    assert info.exit_code == 0
    assert "url: https://todo.example.com/api/v1/telegram/webhook" in info.output
    assert "pending_update_count: 1" in info.output
    deleted = runner.invoke(app, ["telegram", "delete-webhook"], env=env(fake, tmp_path))
    assert deleted.exit_code == 0 and fake.webhook_url == "" and len(fake.pending_updates) == 1


def test_missing_settings_are_named_before_calling_telegram(fake: FakeTelegram, tmp_path: Path) -> None:
    result = runner.invoke(app, ["telegram", "set-webhook"], env=env(fake, tmp_path, TELEGRAM_WEBHOOK_SECRET=""))
    assert result.exit_code == 2 and "TELEGRAM_WEBHOOK_SECRET" in result.output
    result = runner.invoke(app, ["telegram", "webhook-info"], env=env(fake, tmp_path, TELEGRAM_BOT_TOKEN=""))
    assert result.exit_code == 2 and "TELEGRAM_BOT_TOKEN" in result.output
    assert fake.calls == []


def test_a_bad_token_is_reported_without_printing_it(fake: FakeTelegram, tmp_path: Path) -> None:
    wrong = "999:wrong-token-value"
    result = runner.invoke(app, ["telegram", "webhook-info"], env=env(fake, tmp_path, TELEGRAM_BOT_TOKEN=wrong))
    assert result.exit_code == 3 and "Unauthorized" in result.output and wrong not in result.output


def test_poll_handles_pending_updates(fake: FakeTelegram, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'poll.db'}"
    asyncio.run(upgrade_async(database.replace("sqlite://", "sqlite+aiosqlite://")))
    fake.enqueue_update(fake.message_update(42, "/help", language_code="ru"))
    result = runner.invoke(app, ["telegram", "poll", "--once"], env=env(fake, tmp_path, DATABASE_URL=database))
    assert result.exit_code == 0, result.output
    [answer] = fake.sent_messages(42)
    assert answer["text"].startswith("Отправьте задачу")
    assert fake.pending_updates == []  # confirmed
