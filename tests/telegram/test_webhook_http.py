"""The whole path over real HTTP: the fake Bot API delivers updates to the app served by Uvicorn on 127.0.0.1, as
Telegram does (retrying on non-2xx); nothing is lost while maintenance mode answers 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import backend_settings
from tests.fakes.telegram import FakeTelegram
from tests.support import new_user
from tests.telegram.conftest import SECRET, TOKEN, bot_overrides
from timetodo.core.maintenance import set_maintenance
from timetodo.main import create_app
from timetodo.telegram.bot import create_bot
from timetodo.telegram.cli import ensure_webhook
from timetodo.telegram.limiter import MemoryLimiter


@contextlib.asynccontextmanager
async def served(settings: Any) -> AsyncIterator[tuple[str, Any]]:
    app = create_app(settings, configure_logs=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task


async def wait_for_text(fake: FakeTelegram, chat_id: int, start: str, seconds: float = 15.0) -> dict[str, Any]:
    for _ in range(int(seconds / 0.05)):
        for message in fake.sent_messages(chat_id):
            if message["text"].startswith(start):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {start!r} in {fake.sent_messages(chat_id)}")


async def test_updates_arrive_over_http_and_survive_maintenance(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> None:
    with FakeTelegram(TOKEN, auto_deliver=True, delivery_interval=0.1) as fake:
        settings = await backend_settings(
            backend,
            tmp_path_factory.mktemp(f"http-{backend}"),
            lambda: request.getfixturevalue("services"),
            **bot_overrides(fake),
        )
        async with served(settings) as (url, app), httpx.AsyncClient(base_url=url) as api:
            bot = create_bot(TOKEN, fake.base_url, MemoryLimiter(100, 1000))
            try:
                assert await ensure_webhook(bot, url + "/api/v1/telegram/webhook", SECRET) is True
                assert await ensure_webhook(bot, url + "/api/v1/telegram/webhook", SECRET) is False
            finally:
                await bot.session.close()
            headers, _ = await new_user(api)
            token = (await api.post("/api/v1/telegram/link", headers=headers)).json()["token"]
            fake.enqueue_update(fake.message_update(555, f"/start {token}"))
            await wait_for_text(fake, 555, "Linked to")

            async with app.state.sessionmaker() as session:
                await set_maintenance(session, True, "test")
            fake.enqueue_update(fake.message_update(555, "Buy milk tomorrow"))
            for _ in range(100):
                if "503" in (fake.webhook_info().get("last_error_message") or ""):
                    break
                await asyncio.sleep(0.05)
            assert (
                fake.webhook_info()["last_error_message"] == "Wrong response from the webhook: 503 Service Unavailable"
            )
            assert len(fake.pending_updates) == 1  # Telegram keeps it
            async with app.state.sessionmaker() as session:
                await set_maintenance(session, False)
            await wait_for_text(fake, 555, "Added: Buy milk")
            tasks = (await api.get("/api/v1/tasks", headers=headers)).json()["results"]
            assert [t["title"] for t in tasks] == ["Buy milk"]
            assert fake.pending_updates == []
