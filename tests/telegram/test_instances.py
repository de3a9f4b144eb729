"""Two app instances behind one fake Bot API (Telegram-like limits on): each update is handled once, each reminder
is delivered once, and the shared limiter keeps 200 reminders due at the same moment under Telegram's limits.

What "the limiter holds" means here: every request that reached the fake passed the limiter, and the send times the
limiter granted (on its one clock, Redis's) keep the limits exactly — ≥ 1/global_rate between any two sends of the
bot, ≥ 1/chat_rate between two sends to one chat. The fake's own 429s are not asserted away: its sliding window
is measured on arrival times, which also carry the delay between the limiter and the fake (a loaded machine stalls
the sending process or the fake's threads for longer than the window's 50 ms tolerance); a 429 is Telegram's normal
answer and must lose nothing — each one is counted as waited out and retried, and every reminder still arrives
exactly once."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from tests.conftest import asgi_client, backend_settings, running_app
from tests.fakes.telegram import FakeTelegram
from tests.telegram.conftest import SECRET, TOKEN, WEBHOOK, bot_overrides
from timetodo.auth.models import User
from timetodo.core.database import utcnow
from timetodo.reminders.schemas import ReminderIn
from timetodo.reminders.service import create_reminder
from timetodo.tasks.schemas import TaskIn
from timetodo.tasks.service import create_task
from timetodo.telegram.models import TelegramLink, TelegramOutbox

_chats = itertools.count(8_000_001)
_updates = itertools.count(500_000)
Pair = tuple[FakeTelegram, FastAPI, FastAPI]


@pytest.fixture(scope="module")
async def pair(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Pair]:
    with FakeTelegram(TOKEN, limits=True) as fake:
        settings = await backend_settings(
            backend,
            tmp_path_factory.mktemp(f"two-{backend}"),
            lambda: request.getfixturevalue("services"),
            **bot_overrides(fake, TELEGRAM_CHAT_RATE=1.0, TELEGRAM_GLOBAL_RATE=30.0),
        )
        async with running_app(settings) as first, running_app(settings) as second:
            yield fake, first, second


async def linked_users(app: FastAPI, count: int) -> list[tuple[int, int]]:
    """(user id, chat id) of `count` users linked to fresh chats, written directly (no password hashing)."""
    pairs = []
    async with app.state.sessionmaker() as session:
        for _ in range(count):
            chat_id = next(_chats)
            user = User(email=f"tg{chat_id}@example.com", password_hash="!", timezone="UTC", locale="en")
            session.add(user)
            await session.flush()
            session.add(TelegramLink(user_id=user.id, chat_id=chat_id, last_list=[]))
            pairs.append((user.id, chat_id))
        await session.commit()
    return pairs


async def test_each_update_is_handled_once(pair: Pair) -> None:
    fake, first, second = pair
    users = await linked_users(first, 20)
    async with asgi_client(first) as a, asgi_client(second) as b:

        async def deliver_to_both(update: dict[str, Any]) -> list[httpx.Response]:
            headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
            return list(
                await asyncio.gather(
                    a.post(WEBHOOK, json=update, headers=headers), b.post(WEBHOOK, json=update, headers=headers)
                )
            )

        updates = [
            {"update_id": next(_updates), **fake.message_update(chat_id, f"/add Task of {chat_id}")}
            for _, chat_id in users
        ]
        results = await asyncio.gather(*(deliver_to_both(update) for update in updates))
        await first.state.telegram.drain()
        await second.state.telegram.drain()
    for responses in results:
        assert [r.status_code for r in responses] == [200, 200]
        assert sorted(r.json().get("duplicate", False) for r in responses) == [False, True]
    for _, chat_id in users:
        assert [m["text"].splitlines()[0] for m in fake.sent_messages(chat_id)] == [f"Added: Task of {chat_id}"]
    async with first.state.sessionmaker() as session:
        from timetodo.tasks.models import Task

        count = await session.scalar(
            select(func.count()).select_from(Task).where(Task.owner_id.in_([u for u, _ in users]))
        )
    assert count == len(users)


async def test_each_reminder_is_delivered_once_within_telegrams_limits(pair: Pair, backend: str) -> None:
    """200 reminders for 100 chats due at one moment. With Redis the two instances share the limiter: no 429."""
    fake, first, second = pair  # the second instance runs its scheduler and sender too
    chats, per_chat = (100, 2) if backend == "postgres" else (30, 2)
    users = await linked_users(first, chats)
    throttled = fake.throttled
    waited_out = _waited_out()
    grants: list[tuple[int, float]] = []  # (chat id, granted send time) from both instances' limiters
    for app in (first, second):
        app.state.telegram.limiter.on_grant = lambda chat, at: grants.append((chat, at))
    at = utcnow() + timedelta(seconds=3)
    reminder_ids = []
    async with first.state.sessionmaker() as session:
        for user_id, _ in users:
            for n in range(per_chat):
                task = await create_task(session, user_id, TaskIn(title=f"Reminder {n}"))
                reminder = await create_reminder(session, user_id, task.id, ReminderIn(remind_at=at))
                reminder_ids.append(reminder.id)
    chat_ids = {chat_id for _, chat_id in users}

    def delivered() -> list[dict[str, Any]]:
        return [m for m in fake.sent_messages() if m["chat"]["id"] in chat_ids and m["text"].startswith("⏰ Reminder")]

    deadline = asyncio.get_running_loop().time() + 60
    while len(delivered()) < len(reminder_ids) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything sent twice would show up now
    messages = delivered()
    ids = Counter(
        int(button["callback_data"].split(":")[2])
        for m in messages
        for row in m["reply_markup"]["inline_keyboard"]
        for button in row
        if button["callback_data"].startswith("1:r15:")
    )
    assert sorted(ids) == sorted(reminder_ids) and set(ids.values()) == {1}
    per_chat_counts = Counter(m["chat"]["id"] for m in messages)
    assert set(per_chat_counts.values()) == {per_chat}
    async with first.state.sessionmaker() as session:
        states = dict(
            (await session.execute(select(TelegramOutbox.state, func.count()).group_by(TelegramOutbox.state))).all()
        )
    assert states == {"sent": len(reminder_ids)}
    for app in (first, second):
        app.state.telegram.limiter.on_grant = None
    # nothing reached the fake without passing the limiter (429s included: each retry passes it again)
    requests = [p for p in fake.calls_to("sendMessage") if int(p["chat_id"]) in chat_ids]
    assert len([chat for chat, _ in grants if chat in chat_ids]) == len(requests)
    # every 429 was waited out and retried (by the request middleware, or later by the outbox): none lost above
    assert _waited_out() - waited_out == fake.throttled - throttled, fake.throttled_by
    if backend == "postgres":  # the limiter is shared through Redis: its grants keep the limits across instances
        times = sorted(at for _, at in grants)
        closest = min(b - a for a, b in itertools.pairwise(times))
        assert closest >= 1 / 30.0 - 1e-6, closest
        for chat_id in chat_ids:
            mine = sorted(at for chat, at in grants if chat == chat_id)
            assert all(b - a >= 1.0 - 1e-6 for a, b in itertools.pairwise(mine)), mine


def _waited_out() -> float:
    """429s the bot waited out: retried at once by the request middleware, or left to the outbox's next attempt."""
    retried = REGISTRY.get_sample_value("timetodo_telegram_retry_after_total") or 0.0
    later = REGISTRY.get_sample_value("timetodo_telegram_messages_total", {"kind": "reminder", "result": "retry_after"})
    return retried + (later or 0.0)
