"""What a migration needs from the bot: an update accepted just before a write freeze is kept and run later (not
answered "maintenance" and dropped), a probe from `timetodo migrate validate` is answered inline with what the bot
sent, and the bot's Redis keys carry its id."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import backend_settings
from tests.fakes.telegram import FakeTelegram
from tests.telegram.conftest import SECRET, TOKEN, WEBHOOK, Chat, bot_overrides
from timetodo.core.maintenance import set_maintenance
from timetodo.ops.migrate.validate.webhook import PROBE_HEADER, WebhookCheck, probe_bot, probe_update


@pytest.fixture
def chat(bot_app: FastAPI, api: httpx.AsyncClient, fake_telegram: FakeTelegram) -> Chat:
    return Chat(bot_app, api, fake_telegram, "en")


async def test_an_update_refused_by_a_freeze_is_kept_and_run_once_after_it(chat: Chat) -> None:
    """The webhook's maintenance check is a cached early answer: an update it accepted can meet the freeze in its
    handler. The guard refuses the write; the update is kept (no "maintenance" answer) and runs once afterwards."""
    await chat.link()
    runtime = chat.app.state.telegram
    before = len(chat.sent())
    update = {"update_id": 993_001, **chat.fake.message_update(chat.chat_id, "Freeze-proof task")}
    async with chat.app.state.sessionmaker() as session:
        await set_maintenance(session, True, "test")
    try:
        runtime.spawn(update)  # what the webhook does once it has claimed the update
        await runtime.drain()
        assert list(runtime._deferred) == [993_001]
        assert len(chat.sent()) == before  # no "maintenance" answer: the user would have to send it again
        assert await runtime.run_deferred() == 0  # still frozen, not forwarding: kept
    finally:
        async with chat.app.state.sessionmaker() as session:
            await set_maintenance(session, False)
    assert await runtime.run_deferred() == 1
    await runtime.drain()
    assert runtime._deferred == {}
    answers = [m["text"] for m in chat.sent()[before:]]
    assert answers == ["Added: Freeze-proof task"], answers
    tasks = (await chat.api.get("/api/v1/tasks", headers=chat.headers)).json()["results"]
    assert [t["title"] for t in tasks] == ["Freeze-proof task"]
    assert await runtime.run_deferred() == 0


async def test_a_probe_is_answered_inline_with_the_message_the_bot_api_accepted(chat: Chat) -> None:
    probe = probe_update(chat.chat_id, -4242)
    unauthenticated = await chat.api.post(WEBHOOK, json=probe, headers={PROBE_HEADER: "1"})
    assert unauthenticated.status_code == 401
    response = await chat.api.post(
        WEBHOOK, json=probe, headers={PROBE_HEADER: "1", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert response.status_code == 200, response.text
    sent = response.json()["probe"]["sent"]
    pongs = [m for m in chat.sent() if m["text"].startswith("🏓")]
    assert len(pongs) == 1
    assert sent == [{"method": "SendMessage", "chat_id": chat.chat_id, "message_id": pongs[0]["message_id"]}]
    again = await chat.api.post(
        WEBHOOK, json=probe, headers={PROBE_HEADER: "1", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert again.json() == {"ok": True, "duplicate": True}  # the same update id is not answered twice


async def test_validate_probe_requires_the_bots_answer(
    chat: Chat, fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`probe_bot` over HTTP against the app (ASGI transport): an answer is required; a bot that sends nothing (a
    Bot API that refuses the message) is an error; no probe chat is a warning, not a silent pass."""
    transport = httpx.ASGITransport(app=chat.app)
    real_client = httpx.AsyncClient

    def asgi_client(**kwargs: object) -> httpx.AsyncClient:
        return real_client(transport=transport, base_url="http://app", **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", asgi_client)
    url = "http://app" + WEBHOOK
    good = WebhookCheck("x", 0)
    await probe_bot(good, url, SECRET, chat.chat_id)
    assert good.ok and isinstance(good.probe_message_id, int), good
    fake_telegram.fail_next("sendMessage", 400, "Bad Request: chat not found")
    refused = WebhookCheck("x", 0)
    await probe_bot(refused, url, SECRET, chat.chat_id)
    assert not refused.ok and "did not answer /ping" in refused.errors[0], refused
    wrong_secret = WebhookCheck("x", 0)
    await probe_bot(wrong_secret, url, "not-the-secret", chat.chat_id)
    assert not wrong_secret.ok and "401" in wrong_secret.errors[0]
    unset = WebhookCheck("x", 0)
    await probe_bot(unset, url, SECRET, None)
    assert unset.ok and "probe_chat_id" in unset.warnings[0]


async def test_redis_keys_of_the_bot_carry_its_id(chat: Chat, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("claims are database rows without Redis")
    await chat.link()
    client = chat.app.state.cache.client
    bot_id = TOKEN.split(":")[0]
    claims = [key async for key in client.scan_iter(match=f"tg:{bot_id}:update:*")]
    assert claims, "no update claim under the bot's prefix"
    assert [key async for key in client.scan_iter(match="tg:update:*")] == []
    assert chat.app.state.telegram.limiter.prefix == f"tg:{bot_id}:rate"


async def test_an_update_kept_by_a_frozen_host_is_relayed_to_the_new_host_once(
    backend: str, fake_telegram: FakeTelegram, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> None:
    """After a migration's switch the old host forwards to the new one: what it kept is sent to the new host's
    webhook as a relayed update and runs there once — although the old host's claim of the same update id is in
    the shared (or copied) Redis / database — and a repeated relay is a duplicate."""
    from tests.telegram.test_webhook_http import served
    from timetodo.core.maintenance import update_app_state

    def make(name: str) -> Any:
        return backend_settings(
            backend,
            tmp_path_factory.mktemp(name),
            lambda: request.getfixturevalue("services"),
            **bot_overrides(fake_telegram),
        )

    old_settings, new_settings = await make(f"old-{backend}"), await make(f"new-{backend}")
    async with (
        served(old_settings) as (old_url, old),
        served(new_settings) as (new_url, new),
        httpx.AsyncClient(base_url=old_url) as old_api,
        httpx.AsyncClient(base_url=new_url) as api,
    ):
        await Chat(old, old_api, fake_telegram, "en", chat_id=7_900_001).link()
        chat = Chat(new, api, fake_telegram, "en", chat_id=7_900_001)
        await chat.link()  # on both hosts (in a migration: the new host has the old host's data, copied)
        update = {"update_id": 994_001, **fake_telegram.message_update(chat.chat_id, "Relayed task")}
        assert await old.state.telegram.claim(994_001)  # the old host took it from Telegram
        async with old.state.sessionmaker() as session:
            await set_maintenance(session, True, "cutover")
        old.state.telegram.spawn(update)
        await old.state.telegram.drain()
        assert list(old.state.telegram._deferred) == [994_001]
        await new.state.telegram.claim(994_001)  # the id is taken there too (shared Redis / a copied database)
        async with old.state.sessionmaker() as session:
            await update_app_state(session, forward_to=new_url)
        before = len(chat.sent())
        assert await old.state.telegram.run_deferred() == 1
        await new.state.telegram.drain()
        assert [m["text"] for m in chat.sent()[before:]] == ["Added: Relayed task"]
        tasks = (await api.get("/api/v1/tasks", headers=chat.headers)).json()["results"]
        assert [t["title"] for t in tasks] == ["Relayed task"]
        again = await api.post(
            WEBHOOK,
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET, "X-Timetodo-Relayed-Update": "1"},
        )
        assert again.json() == {"ok": True, "duplicate": True}


async def test_health_detailed_reports_the_webhook_from_a_cache(bot_app: FastAPI, fake_telegram: FakeTelegram) -> None:
    from tests.conftest import asgi_client
    from timetodo.telegram import runtime as runtime_module

    runtime = bot_app.state.telegram
    expected = bot_app.state.settings.PUBLIC_BASE_URL.rstrip("/") + WEBHOOK
    saved = fake_telegram.webhook_info()["url"]
    fake_telegram.point_webhook(expected)
    try:
        runtime._webhook_info = None
        calls = len(fake_telegram.calls_to("getWebhookInfo"))
        async with asgi_client(bot_app, ip="127.0.0.1") as operator:
            report = (await operator.get("/health/detailed")).json()["checks"]["telegram"]
            assert report["ok"] is True and report["webhook_ok"] is True, report
            assert report["url"] == expected and report["pending_update_count"] == len(fake_telegram.pending_updates)
            fake_telegram.record_error("Wrong response from the webhook: 502 Bad Gateway")
            cached = (await operator.get("/health/detailed")).json()["checks"]["telegram"]
            assert cached == report  # from the cache: one getWebhookInfo per WEBHOOK_INFO_SECONDS
            assert len(fake_telegram.calls_to("getWebhookInfo")) == calls + 1
            runtime._webhook_info = (runtime._webhook_info[0] - runtime_module.WEBHOOK_INFO_SECONDS, {})
            failing = (await operator.get("/health/detailed")).json()
            report = failing["checks"]["telegram"]
            assert report["webhook_ok"] is False and "502" in report["last_error_message"]
            assert report["ok"] is True and failing["status"] == "ok"  # informational: the app itself is fine
        async with asgi_client(bot_app, ip="203.0.113.9") as stranger:
            assert (await stranger.get("/health/detailed")).json()["checks"]["telegram"] == "ok"
    finally:
        with httpx.Client(base_url=fake_telegram.base_url) as c:
            c.post(f"/bot{TOKEN}/deleteWebhook")  # clears the recorded error too
        fake_telegram.point_webhook(saved)
        runtime._webhook_info = None
