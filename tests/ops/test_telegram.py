"""timetodo.ops.telegram against the fake Bot API (tests/fakes/telegram.py), both over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.fakes.telegram import FakeTelegram
from tests.support import free_port
from timetodo.ops.adapters.telegram import TelegramClient, TelegramError, TelegramUnreachable, mask_bot_token

TOKEN = "123456789:AAHfakeTokenForTheTestsOnly_0123456789abc"
WRONG_TOKEN = "987654321:AAHwrongTokenThatMustNeverLeak_zyxwvuts98"
SECRET_A = "secret-a_0123456789"
SECRET_B = "secret-b_9876543210"


class Endpoint:
    """A webhook receiver on 127.0.0.1 answering every POST with `status`; records (headers, JSON body)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.received.append((dict(self.headers.items()), json.loads(body)))
                self.send_response(endpoint.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1/telegram/webhook"

    def __enter__(self) -> Endpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram(TOKEN) as tg:
        yield tg


def client_for(fake: FakeTelegram, token: str = TOKEN, **kwargs: Any) -> TelegramClient:
    return TelegramClient(token, api_base=fake.base_url, **{"backoff": 0.05, **kwargs})


async def test_get_me(fake: FakeTelegram) -> None:
    async with client_for(fake) as tg:
        bot = await tg.get_me()
    assert (bot.id, bot.is_bot, bot.username) == (123456789, True, "timetodo_test_bot")
    assert fake.calls == [("getMe", {})]


async def test_wrong_token_is_401_and_never_leaks(fake: FakeTelegram, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(fake, WRONG_TOKEN)
    with pytest.raises(TelegramError) as caught:
        await client.get_me()
    error = caught.value
    assert error.code == 401
    assert error.description == "Unauthorized"
    assert str(error) == (
        "Telegram getMe failed with 401: Unauthorized "
        "(the bot token was rejected; check the token the configuration points at)"
    )
    assert error.__cause__ is None and error.__context__ is None
    # the request really went out and httpx logged it, masked
    http_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("/bot***/getMe" in line and "401" in line for line in http_lines), http_lines
    everything = "\n".join(
        [str(error), repr(error), *traceback.format_exception(error), caplog.text, repr(client), *http_lines]
    )
    for secret in (WRONG_TOKEN, WRONG_TOKEN.split(":", 1)[1]):
        assert secret not in everything
    assert fake.calls == [("getMe", {})]


async def test_unreachable_api_names_the_masked_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    client = TelegramClient(TOKEN, api_base=f"http://127.0.0.1:{port}", retries=1, backoff=0.01)
    with pytest.raises(TelegramUnreachable) as caught:
        await client.get_webhook_info()
    text = str(caught.value)
    assert caught.value.code == 0
    assert f"cannot reach http://127.0.0.1:{port}/bot***/getWebhookInfo" in text
    assert "retrying" in caplog.text  # one retry was made before giving up
    assert TOKEN not in text + caplog.text + "".join(traceback.format_exception(caught.value))


def test_mask_bot_token() -> None:
    url = f"https://api.telegram.org/bot{TOKEN}/setWebhook"
    assert mask_bot_token(url) == "https://api.telegram.org/bot***/setWebhook"
    assert mask_bot_token(f"token was {TOKEN}!", TOKEN) == "token was ***!"
    assert TOKEN not in mask_bot_token(f"saw {TOKEN} in a message")  # the shape of a bot token alone is masked


async def test_switch_webhook_keeps_pending_updates_and_settings(fake: FakeTelegram) -> None:
    for n in range(3):
        fake.enqueue_update({"message": {"message_id": n, "text": f"hello {n}"}})
    url_a = "http://127.0.0.1:18080/api/v1/telegram/webhook"
    url_b = "https://new-host.example.com/api/v1/telegram/webhook"
    async with client_for(fake) as tg:
        assert await tg.set_webhook(
            url_a, secret_token=SECRET_A, max_connections=10, allowed_updates=["message", "callback_query"]
        )
        result = await tg.switch_webhook(url_b, secret_token=SECRET_B, settle=0.2)
        info = await tg.get_webhook_info()

    assert result.confirmed and result.error is None and result.last_error is None
    assert result.before.url == url_a and result.after.url == url_b
    assert result.pending_before == result.pending_after == 3
    assert info.url == url_b
    assert info.pending_update_count == 3
    assert info.allowed_updates == ["message", "callback_query"]
    assert info.max_connections == 10
    assert info.has_custom_certificate is False
    assert [u["update_id"] for u in fake.pending_updates] == [1, 2, 3]
    assert fake.secret_token == SECRET_B
    switch_call = fake.calls_to("setWebhook")[-1]
    assert switch_call == {
        "url": url_b,
        "drop_pending_updates": False,
        "secret_token": SECRET_B,
        "max_connections": 10,
        "allowed_updates": ["message", "callback_query"],
    }
    assert result.to_dict()["after"]["pending_update_count"] == 3


async def test_switch_ignores_an_error_older_than_the_switch(fake: FakeTelegram) -> None:
    async with client_for(fake) as tg:
        await tg.set_webhook("https://old.example.com/hook", secret_token=SECRET_A)
        fake.record_error("Wrong response from the webhook: 502 Bad Gateway", when=int(time.time()) - 120)
        result = await tg.switch_webhook("https://new.example.com/hook", secret_token=SECRET_B, settle=0.1)
    assert result.confirmed
    assert result.after.last_error_message == "Wrong response from the webhook: 502 Bad Gateway"  # still shown...
    assert result.last_error is None  # ...but it predates the switch


async def test_429_retry_after_is_honoured(fake: FakeTelegram) -> None:
    fake.enqueue_update({"message": {"text": "x"}})
    fake.fail_next("getWebhookInfo", 429, "Too Many Requests: retry after 1", retry_after=1)
    async with client_for(fake) as tg:
        started = time.monotonic()
        info = await tg.get_webhook_info()
        waited = time.monotonic() - started
    assert info.pending_update_count == 1
    assert waited >= 0.95
    assert len(fake.calls_to("getWebhookInfo")) == 2


async def test_429_beyond_the_bounds_raises(fake: FakeTelegram) -> None:
    fake.fail_next("setWebhook", 429, "Too Many Requests: retry after 30", retry_after=30)
    async with client_for(fake, max_retry_after=5) as tg:
        started = time.monotonic()
        with pytest.raises(TelegramError) as caught:
            await tg.set_webhook("https://new.example.com/hook")
    assert time.monotonic() - started < 2  # did not sleep 30 s
    assert (caught.value.code, caught.value.retry_after) == (429, 30)
    assert "retry after 30 s" in str(caught.value)
    assert fake.webhook_url == ""  # the failed call changed nothing

    fake.fail_next("getMe", 429, "Too Many Requests: retry after 0", retry_after=0, times=3)
    async with client_for(fake, retries=2) as tg:
        with pytest.raises(TelegramError) as caught:
            await tg.get_me()
    assert caught.value.code == 429
    assert len(fake.calls_to("getMe")) == 3  # first try + 2 retries


async def test_server_error_is_retried(fake: FakeTelegram) -> None:
    fake.fail_next("getMe", 502, "Bad Gateway")
    async with client_for(fake) as tg:
        bot = await tg.get_me()
    assert bot.id == 123456789
    assert len(fake.calls_to("getMe")) == 2


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/hook", "bad webhook: An HTTPS URL must be provided for webhook"),
        ("ftp://127.0.0.1/hook", "bad webhook: An HTTPS URL must be provided for webhook"),
        ("https://example.com:8080/hook", "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"),
        ("not a url", "bad webhook: An HTTPS URL must be provided for webhook"),
    ],
)
async def test_invalid_webhook_url_is_400(fake: FakeTelegram, url: str, problem: str) -> None:
    async with client_for(fake) as tg:
        await tg.set_webhook("https://good.example.com/hook")
        with pytest.raises(TelegramError) as caught:
            await tg.switch_webhook(url, secret_token=SECRET_B)
    assert caught.value.code == 400
    assert caught.value.description == f"Bad Request: {problem}"
    assert str(caught.value) == f"Telegram setWebhook failed with 400: Bad Request: {problem}"
    assert fake.webhook_url == "https://good.example.com/hook"  # unchanged


async def test_invalid_secret_token_is_400(fake: FakeTelegram) -> None:
    async with client_for(fake) as tg:
        with pytest.raises(TelegramError) as caught:
            await tg.set_webhook("https://good.example.com/hook", secret_token="has spaces!")
    assert caught.value.code == 400
    assert "secret token contains unallowed characters" in str(caught.value)
    assert "has spaces!" not in str(caught.value)


async def test_switch_to_a_failing_webhook_reports_the_error(fake: FakeTelegram) -> None:
    with Endpoint(200) as good, Endpoint(503) as bad:
        for n in range(3):
            fake.enqueue_update({"message": {"message_id": n}})
        async with client_for(fake) as tg:
            await tg.set_webhook(good.url, secret_token=SECRET_A)
            first = fake.deliver()
            assert (first.delivered, first.error) == (3, None)
            assert [body["update_id"] for _, body in good.received] == [1, 2, 3]
            assert all(headers["X-Telegram-Bot-Api-Secret-Token"] == SECRET_A for headers, _ in good.received)
            assert (await tg.get_webhook_info()).pending_update_count == 0

            fake.enqueue_update({"message": {"message_id": 10}})
            fake.enqueue_update({"message": {"message_id": 11}})

            def deliver_once_switched() -> None:  # Telegram tries the new URL right after setWebhook
                deadline = time.monotonic() + 5
                while fake.webhook_url != bad.url and time.monotonic() < deadline:
                    time.sleep(0.01)
                fake.deliver()

            result, _ = await asyncio.gather(
                tg.switch_webhook(bad.url, secret_token=SECRET_B, timeout=10, settle=5),
                asyncio.to_thread(deliver_once_switched),
            )

    assert not result.confirmed
    assert result.after.url == bad.url
    assert result.last_error == "Wrong response from the webhook: 503 Service Unavailable"
    assert (
        result.error == "delivery to the new webhook failed: Wrong response from the webhook: 503 Service Unavailable"
    )
    assert result.after.last_error_date is not None and result.after.last_error_date >= int(result.switched_at)
    assert result.elapsed < 5  # ended on the error, did not wait out `settle`
    assert result.pending_before == result.pending_after == 2  # nothing lost: the failed update stays queued
    assert len(bad.received) == 1  # delivery stops at the first failure, in order
    headers, body = bad.received[0]
    assert headers["X-Telegram-Bot-Api-Secret-Token"] == SECRET_B
    assert body["update_id"] == 4 and body["message"] == {"message_id": 10}


async def test_delivery_to_a_closed_port_is_connection_refused(fake: FakeTelegram) -> None:
    fake.enqueue_update({"message": {"text": "x"}})
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with client_for(fake) as tg:
        await tg.set_webhook(url)
        report = fake.deliver()
        info = await tg.get_webhook_info()
    assert report.delivered == 0 and report.error == "Connection refused"
    assert info.last_error_message == "Connection refused"
    assert info.pending_update_count == 1


async def test_get_updates_while_a_webhook_is_set_is_409(fake: FakeTelegram) -> None:
    fake.enqueue_update({"message": {"text": "queued"}})
    async with client_for(fake) as tg:
        await tg.set_webhook("https://bot.example.com/hook")
        with pytest.raises(TelegramError) as caught:
            await tg.get_updates()
        assert caught.value.code == 409
        assert "can't use getUpdates method while webhook is active" in caught.value.description
        assert await tg.delete_webhook() is True
        updates = await tg.get_updates()
        assert [u["message"]["text"] for u in updates] == ["queued"]
        assert await tg.get_updates(offset=updates[-1]["update_id"] + 1) == []  # confirmed and gone
    assert fake.pending_updates == []


async def test_fake_delete_webhook_drop_pending_updates(fake: FakeTelegram) -> None:
    fake.enqueue_update({"message": {"text": "a"}})
    fake.enqueue_update({"message": {"text": "b"}})
    async with client_for(fake) as tg:
        await tg.set_webhook("https://bot.example.com/hook", secret_token=SECRET_A)
        assert await tg.delete_webhook(drop_pending_updates=False)
        kept = await tg.get_webhook_info()
        await tg.set_webhook("https://bot.example.com/hook")
        assert await tg.delete_webhook(drop_pending_updates=True)
        dropped = await tg.get_webhook_info()
    assert (kept.url, kept.pending_update_count, kept.max_connections) == ("", 2, None)
    assert (dropped.url, dropped.pending_update_count) == ("", 0)
    assert fake.pending_updates == []
    assert [c["drop_pending_updates"] for c in fake.calls_to("deleteWebhook")] == [False, True]


def test_fake_speaks_the_raw_protocol(fake: FakeTelegram) -> None:
    base = f"{fake.base_url}/bot{TOKEN}"
    with httpx.Client() as http:
        # form encoding, as many clients send it: booleans and arrays as strings
        answer = http.post(
            f"{base}/setWebhook",
            data={"url": "https://a.example.com/h", "max_connections": "5", "allowed_updates": '["message"]'},
        )
        assert answer.status_code == 200
        assert answer.json() == {"ok": True, "result": True, "description": "Webhook was set"}
        again = http.post(f"{base}/setWebhook", json={"url": "https://a.example.com/h", "max_connections": 5})
        assert again.json()["description"] == "Webhook is already set"  # allowed_updates kept from before
        info = http.get(f"{base}/getWebhookInfo").json()
        assert info == {
            "ok": True,
            "result": {
                "url": "https://a.example.com/h",
                "has_custom_certificate": False,
                "pending_update_count": 0,
                "max_connections": 5,
                "allowed_updates": ["message"],
            },
        }
        multipart = http.post(f"{base}/deleteWebhook", files={"drop_pending_updates": (None, "true")})
        assert multipart.json() == {"ok": True, "result": True, "description": "Webhook was deleted"}

        unknown = http.post(f"{base}/sendPigeon")
        assert (unknown.status_code, unknown.json()) == (
            404,
            {"ok": False, "error_code": 404, "description": "Not Found"},
        )
        assert http.get(f"{fake.base_url}/getMe").status_code == 404
        wrong = http.get(f"{fake.base_url}/bot{WRONG_TOKEN}/getMe")
        assert (wrong.status_code, wrong.json()) == (
            401,
            {"ok": False, "error_code": 401, "description": "Unauthorized"},
        )
        fake.fail_next("getMe", 429, "Too Many Requests: retry after 7", retry_after=7)
        limited = http.get(f"{base}/getMe")
        assert (limited.status_code, limited.json()["parameters"]) == (429, {"retry_after": 7})
        assert http.get(f"{base}/getMe").status_code == 200  # only the next call failed
    assert fake.calls_to("deleteWebhook") == [{"drop_pending_updates": "true"}]


def test_fake_auto_delivers_like_telegram() -> None:
    with Endpoint(200) as endpoint, FakeTelegram(TOKEN, auto_deliver=True, delivery_interval=0.05) as tg:
        tg.enqueue_update({"message": {"text": "early"}})
        httpx.post(f"{tg.base_url}/bot{TOKEN}/setWebhook", json={"url": endpoint.url, "secret_token": SECRET_A})
        tg.enqueue_update({"message": {"text": "late"}})
        deadline = time.monotonic() + 5
        while tg.pending_updates and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tg.pending_updates == []
    assert [body["message"]["text"] for _, body in endpoint.received] == ["early", "late"]
    assert {headers["X-Telegram-Bot-Api-Secret-Token"] for headers, _ in endpoint.received} == {SECRET_A}
