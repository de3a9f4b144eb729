"""A fake Telegram Bot API: a real HTTP server on 127.0.0.1 that follows the documented protocol.

https://core.telegram.org/bots/api — requests go to `{base_url}/bot<token>/<method>` as GET (query string) or POST
(JSON, urlencoded form or multipart form); answers are `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": N, "description": "...", "parameters": {"retry_after": N}}` with the HTTP status equal to
the error code.

Implemented methods: getMe, setWebhook, deleteWebhook, getWebhookInfo, getUpdates, sendMessage, editMessageText,
editMessageReplyMarkup, answerCallbackQuery, setMyCommands, getMyCommands. Webhook URLs must be https (on
ports 80, 88, 443 or 8443, like the real API) — except on loopback hosts (127.0.0.1, localhost, ::1) where http and
any port are accepted so tests can point the bot at local servers.

Behaviour worth knowing, modelled on the real API:
* pending updates survive setWebhook / deleteWebhook unless `drop_pending_updates` is true;
* `allowed_updates` keeps its previous value when setWebhook does not pass it; `max_connections` defaults to 40;
* `last_error_date` / `last_error_message` persist across setWebhook (callers must compare the date with the time of
  their switch); deleteWebhook clears them;
* getUpdates answers 409 Conflict while a webhook is set.

* sending to a chat: at most `chat_rate` messages per chat and `global_rate` per bot in any sliding second when
  `limits=True` (like Telegram's "about one message per second per chat, 30 per second overall"); above that the
  answer is 429 `Too Many Requests: retry after N` with `parameters.retry_after`;
* a chat that blocked the bot (`block_chat`) answers 403 `Forbidden: bot was blocked by the user`.

Test hooks: `enqueue_update`, `deliver` (or `auto_deliver=True`), `fail_next`, `calls`, `message_update`,
`callback_update`, `sent_messages`, `block_chat`, `throttled` (429s answered).

    with FakeTelegram("123456:ABC...") as tg:
        client = TelegramClient(token, api_base=tg.base_url)
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
WEBHOOK_PORTS = {80, 88, 443, 8443}
SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
METHODS = {
    "getme",
    "setwebhook",
    "deletewebhook",
    "getwebhookinfo",
    "getupdates",
    "sendmessage",
    "editmessagetext",
    "editmessagereplymarkup",
    "answercallbackquery",
    "setmycommands",
    "getmycommands",
}
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64
LIMIT_WINDOW = 0.95  # seconds: a sliding second, with a little tolerance for clock jitter between processes
_PATH = re.compile(r"^/bot([^/]+)/([A-Za-z]+)/?$")


class ApiError(Exception):
    """An error answer: `{"ok": false, "error_code": code, "description": description}`."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(text: str) -> ApiError:
    return ApiError(400, f"Bad Request: {text}")


@dataclass
class Delivery:
    """What a `deliver()` run did."""

    delivered: int = 0
    error: str | None = None


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.lower() in {"true", "1", "false", "0", ""}:
        return value.lower() in {"true", "1"}
    raise bad_request(f'can\'t parse parameter "{name}": expected a Boolean')


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise bad_request(f'can\'t parse parameter "{name}": expected an Integer')
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise bad_request(f'can\'t parse parameter "{name}": expected an Integer')


def _as_str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):  # form encoding: a JSON-serialized array
        try:
            value = json.loads(value) if value else []
        except json.JSONDecodeError:
            raise bad_request(f"can't parse {name.replace('_', ' ')} JSON array") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_request(f"can't parse {name.replace('_', ' ')} JSON array")
    return list(value)


class FakeTelegram:
    """The Bot API for one bot (one valid token), served on 127.0.0.1 from a background thread. Thread-safe."""

    def __init__(
        self,
        token: str,
        *,
        username: str = "timetodo_test_bot",
        auto_deliver: bool = False,
        delivery_interval: float = 0.2,
        delivery_timeout: float = 5.0,
        verify_tls: bool = True,
        limits: bool = False,
        chat_rate: int = 1,
        global_rate: int = 30,
    ) -> None:
        self.token = token
        self.username = username
        self.auto_deliver = auto_deliver
        self.delivery_interval = delivery_interval
        self.delivery_timeout = delivery_timeout
        self.verify_tls = verify_tls
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._delivering = threading.Lock()  # one delivery run at a time keeps updates in order
        self._calls: list[tuple[str, dict[str, Any]]] = []
        self._failures: dict[str, deque[ApiError]] = {}
        self._queue: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._webhook_url = ""
        self._secret_token: str | None = None
        self._max_connections: int | None = None
        self._allowed_updates: list[str] | None = None
        self._last_error_date: int | None = None
        self._last_error_message: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.limits = limits
        self.chat_rate = chat_rate
        self.global_rate = global_rate
        self._sends: deque[tuple[float, int]] = deque()  # (monotonic time, chat id) of recent sends
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._sent_at: dict[tuple[int, int], float] = {}  # wall-clock time each bot message arrived
        self._next_message_id: dict[int, int] = {}
        self._blocked: set[int] = set()
        self._commands: dict[str, list[dict[str, Any]]] = {}
        self._answered: list[dict[str, Any]] = []
        self.throttled = 0
        self.throttled_by: dict[str, int] = {"chat": 0, "global": 0}  # which limit each 429 hit
        self._next_callback_id = 1

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            api = fake

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-telegram", daemon=True
        )
        serve.start()
        self._threads = [serve]
        if self.auto_deliver:
            worker = threading.Thread(target=self._deliver_loop, name="fake-telegram-delivery", daemon=True)
            worker.start()
            self._threads.append(worker)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeTelegram is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Use as TELEGRAM_API_BASE: clients build `{base_url}/bot{token}/{method}`."""
        return f"http://127.0.0.1:{self.port}"

    def method_url(self, method: str, token: str | None = None) -> str:
        return f"{self.base_url}/bot{self.token if token is None else token}/{method}"

    # ---- test hooks ----------------------------------------------------------------------------------------------

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        """Every request that named a method, as (method as sent, parsed parameters), oldest first (a copy)."""
        with self._lock:
            return [(method, dict(params)) for method, params in self._calls]

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name.lower() == method.lower()]

    def enqueue_update(self, update: dict[str, Any]) -> int:
        """Add a pending update (an `update_id` is assigned unless given); returns its update_id."""
        with self._changed:
            update = dict(update)
            if "update_id" not in update:
                update["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, int(update["update_id"])) + 1
            self._queue.append(update)
            self._changed.notify_all()
            return int(update["update_id"])

    def fail_next(
        self, method: str, error_code: int, description: str, retry_after: int | None = None, *, times: int = 1
    ) -> None:
        """Answer the next `times` calls of `method` (case-insensitive) with this error instead of running them."""
        with self._lock:
            queue = self._failures.setdefault(method.lower(), deque())
            for _ in range(times):
                queue.append(ApiError(error_code, description, retry_after))

    def block_chat(self, chat_id: int, blocked: bool = True) -> None:
        """Make sends to `chat_id` answer 403 "bot was blocked by the user" (or stop doing so)."""
        with self._lock:
            (self._blocked.add if blocked else self._blocked.discard)(chat_id)

    def message_update(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        language_code: str = "en",
        reply_to: int | None = None,
        chat_type: str = "private",
    ) -> dict[str, Any]:
        """An update with a text message from a user (the private chat's id is the user's id)."""
        with self._lock:
            message_id = self._new_message_id(chat_id)
        sender = {"id": user_id or chat_id, "is_bot": False, "first_name": "Test", "language_code": language_code}
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type},
            "from": sender,
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if reply_to is not None:
            with self._lock:
                original = self._messages.get((chat_id, reply_to))
            message["reply_to_message"] = (
                dict(original)
                if original
                else {
                    "message_id": reply_to,
                    "date": int(time.time()),
                    "chat": {"id": chat_id, "type": chat_type},
                }
            )
        return {"message": message}

    def callback_update(
        self, chat_id: int, message_id: int, data: str, *, user_id: int | None = None, language_code: str = "en"
    ) -> dict[str, Any]:
        """An update for a press on an inline button of the bot's message `message_id` in `chat_id`."""
        with self._lock:
            original = self._messages.get((chat_id, message_id))
            callback_id = str(self._next_callback_id)
            self._next_callback_id += 1
        message = (
            dict(original)
            if original
            else {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private"},
            }
        )
        sender = {"id": user_id or chat_id, "is_bot": False, "first_name": "Test", "language_code": language_code}
        return {
            "callback_query": {
                "id": callback_id,
                "from": sender,
                "message": message,
                "chat_instance": str(chat_id),
                "data": data,
            }
        }

    def sent_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot sent or edited, oldest first, as they are now (text, reply_markup, chat, message_id)."""
        with self._lock:
            items = sorted(self._messages.values(), key=lambda m: (m["chat"]["id"], m["message_id"]))
            return [
                dict(m)
                for m in items
                if m.get("from", {}).get("is_bot") and (chat_id is None or m["chat"]["id"] == chat_id)
            ]

    def sent_at(self, chat_id: int, message_id: int) -> float | None:
        """When sendMessage created this message (time.time()), for latency measurements."""
        with self._lock:
            return self._sent_at.get((chat_id, message_id))

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        with self._lock:
            found = self._messages.get((chat_id, message_id))
            return dict(found) if found else None

    @property
    def answered_callbacks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._answered]

    def commands(self, language_code: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return list(self._commands.get(language_code, []))

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(update) for update in self._queue]

    @property
    def webhook_url(self) -> str:
        with self._lock:
            return self._webhook_url

    @property
    def secret_token(self) -> str | None:
        with self._lock:
            return self._secret_token

    @property
    def allowed_updates(self) -> list[str] | None:
        with self._lock:
            return None if self._allowed_updates is None else list(self._allowed_updates)

    @property
    def max_connections(self) -> int | None:
        with self._lock:
            return self._max_connections

    def webhook_info(self) -> dict[str, Any]:
        """What getWebhookInfo answers right now."""
        with self._lock:
            info: dict[str, Any] = {
                "url": self._webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": len(self._queue),
            }
            if self._last_error_date is not None:
                info["last_error_date"] = self._last_error_date
                info["last_error_message"] = self._last_error_message
            if self._webhook_url:
                info["max_connections"] = self._max_connections
                if urlsplit(self._webhook_url).hostname in LOOPBACK_HOSTS:
                    info["ip_address"] = "127.0.0.1"
            if self._allowed_updates is not None:
                info["allowed_updates"] = list(self._allowed_updates)
            return info

    def point_webhook(self, url: str) -> None:
        """Set the webhook URL as if someone had set it earlier (no setWebhook call recorded; tests that count the
        app's own setWebhook calls share this fake)."""
        with self._lock:
            self._webhook_url = url

    def record_error(self, message: str, when: int | None = None) -> None:
        """Set last_error_date/last_error_message as a failed delivery would."""
        with self._lock:
            self._last_error_date = int(time.time()) if when is None else when
            self._last_error_message = message

    def deliver(self) -> Delivery:
        """POST pending updates, oldest first, to the current webhook, like Telegram does.

        Each update is sent alone as a JSON body with `X-Telegram-Bot-Api-Secret-Token` when a secret is set; a 2xx
        answer removes it from the queue. The first failure is recorded as last_error_date/last_error_message
        ("Wrong response from the webhook: 503 Service Unavailable", "Connection refused", ...) and stops the run.
        """
        with self._delivering:
            report = Delivery()
            while True:
                with self._lock:
                    url, secret = self._webhook_url, self._secret_token
                    if not url or not self._queue:
                        return report
                    update = dict(self._queue[0])
                error = self._post(url, secret, update)
                with self._changed:
                    if error is not None:
                        self.record_error(error)
                        report.error = error
                        return report
                    self._queue = [item for item in self._queue if item.get("update_id") != update["update_id"]]
                    report.delivered += 1
                    self._changed.notify_all()

    # ---- internals -----------------------------------------------------------------------------------------------

    def _post(self, url: str, secret: str | None, update: dict[str, Any]) -> str | None:
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        try:
            with httpx.Client(timeout=self.delivery_timeout, verify=self.verify_tls, follow_redirects=False) as http:
                response = http.post(url, content=json.dumps(update).encode(), headers=headers)
        except httpx.ConnectTimeout:
            return "Connection timed out"
        except httpx.TimeoutException:
            return "Read timeout expired"
        except httpx.ConnectError as exc:
            text = str(exc)
            if "refused" in text.lower():
                return "Connection refused"
            if "ssl" in text.lower() or "certificate" in text.lower():
                return f"SSL error {{{text}}}"
            return f"Failed to connect: {text}"
        except httpx.HTTPError as exc:
            return f"Connection error: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"Wrong response from the webhook: {response.status_code} {response.reason_phrase}".rstrip()

    def _deliver_loop(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                if not (self._webhook_url and self._queue):
                    self._changed.wait(timeout=self.delivery_interval)
                    continue
            report = self.deliver()
            if report.error is not None:  # Telegram retries later; so do we
                self._stopping.wait(self.delivery_interval)

    def handle(self, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one request; returns (HTTP status, JSON body)."""
        match = _PATH.match(path)
        if match is None:
            return 404, ApiError(404, "Not Found").body()
        token, method = match.group(1), match.group(2)
        with self._lock:
            self._calls.append((method, dict(params)))
        try:
            if token != self.token:
                raise ApiError(401, "Unauthorized")
            name = method.lower()
            if name not in METHODS:
                raise ApiError(404, "Not Found")
            with self._lock:
                failures = self._failures.get(name)
                if failures:
                    raise failures.popleft()
            body = getattr(self, f"_api_{name}")(params)
        except ApiError as exc:
            if exc.code == 429:
                with self._lock:
                    self.throttled += 1
            return exc.code, exc.body()
        return 200, body

    def _api_getme(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = self.token.split(":", 1)[0]
        return {
            "ok": True,
            "result": {
                "id": int(prefix) if prefix.isdigit() else 1,
                "is_bot": True,
                "first_name": "Time to DO (test)",
                "username": self.username,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
                "can_connect_to_business": False,
                "has_main_web_app": False,
            },
        }

    def _validate_url(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad_request("bad webhook: Wrong port number specified in the URL") from None
        host = parts.hostname or ""
        if host in LOOPBACK_HOSTS:
            if parts.scheme not in {"http", "https"}:
                raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
            return
        if parts.scheme != "https":
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        if not host or "." not in host:
            raise bad_request("bad webhook: Failed to resolve host: Name or service not known")
        if port is not None and port not in WEBHOOK_PORTS:
            raise bad_request("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")

    def _api_setwebhook(self, params: dict[str, Any]) -> dict[str, Any]:
        url = str(params.get("url", "") or "")
        drop = _as_bool("drop_pending_updates", params.get("drop_pending_updates", False))
        if not url:  # "Use an empty string to remove webhook integration"
            return self._remove_webhook(drop)
        self._validate_url(url)
        secret = params.get("secret_token")
        secret = None if secret in (None, "") else str(secret)
        if secret is not None and not SECRET_TOKEN.match(secret):
            raise bad_request("secret token contains unallowed characters")
        max_connections = _as_int("max_connections", params.get("max_connections", 40))
        if not 1 <= max_connections <= 100:
            raise bad_request("bad webhook: max_connections must be between 1 and 100")
        allowed = _as_str_list("allowed_updates", params["allowed_updates"]) if "allowed_updates" in params else None
        with self._changed:
            if allowed is None:
                allowed = self._allowed_updates  # "If not specified, the previous setting will be used."
            same = (url, secret, max_connections, allowed) == (
                self._webhook_url,
                self._secret_token,
                self._max_connections,
                self._allowed_updates,
            )
            self._webhook_url, self._secret_token = url, secret
            self._max_connections, self._allowed_updates = max_connections, allowed
            if drop:
                self._queue.clear()
            self._changed.notify_all()
        return {"ok": True, "result": True, "description": "Webhook is already set" if same else "Webhook was set"}

    def _remove_webhook(self, drop: bool) -> dict[str, Any]:
        with self._changed:
            had = bool(self._webhook_url)
            self._webhook_url, self._secret_token, self._max_connections = "", None, None
            self._last_error_date = self._last_error_message = None
            if drop:
                self._queue.clear()
            self._changed.notify_all()
        return {
            "ok": True,
            "result": True,
            "description": "Webhook was deleted" if had else "Webhook is already deleted",
        }

    def _api_deletewebhook(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._remove_webhook(_as_bool("drop_pending_updates", params.get("drop_pending_updates", False)))

    def _api_getwebhookinfo(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": self.webhook_info()}

    # ---- messages --------------------------------------------------------------------------------------------------

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _chat_id(self, params: dict[str, Any]) -> int:
        if "chat_id" not in params or params["chat_id"] in ("", None):
            raise bad_request("chat_id is empty")
        try:
            return _as_int("chat_id", params["chat_id"])
        except ApiError:
            raise bad_request("chat not found") from None

    def _text(self, params: dict[str, Any]) -> str:
        text = str(params.get("text", "") or "")
        if not text.strip():
            raise bad_request("message text is empty")
        if len(text) > MAX_TEXT:
            raise bad_request("message is too long")
        return text

    def _markup(self, params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if markup in (None, ""):
            return None
        if isinstance(markup, str):
            try:
                markup = json.loads(markup)
            except json.JSONDecodeError:
                raise bad_request("can't parse reply keyboard markup JSON object") from None
        if not isinstance(markup, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                    raise bad_request("BUTTON_DATA_INVALID")
                if not button.get("text"):
                    raise bad_request("text buttons are unallowed in the inline keyboard")
        return markup

    def _check_chat(self, chat_id: int) -> None:
        """403 for blocked chats; 429 above the per-chat or global rate when limits are on (records the send)."""
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if not self.limits:
            return
        now = time.monotonic()
        while self._sends and now - self._sends[0][0] > LIMIT_WINDOW:
            self._sends.popleft()
        if sum(1 for _, chat in self._sends if chat == chat_id) >= self.chat_rate:
            self.throttled_by["chat"] += 1
            raise ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
        if len(self._sends) >= self.global_rate:
            self.throttled_by["global"] += 1
            raise ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
        self._sends.append((now, chat_id))

    def _bot_user(self) -> dict[str, Any]:
        me = self._api_getme({})["result"]
        return {"id": me["id"], "is_bot": True, "first_name": me["first_name"], "username": me["username"]}

    def _api_sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        text = self._text(params)
        markup = self._markup(params)
        with self._lock:
            self._check_chat(chat_id)
            message: dict[str, Any] = {
                "message_id": self._new_message_id(chat_id),
                "from": self._bot_user(),
                "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                "date": int(time.time()),
                "text": text,
            }
            if markup is not None:
                message["reply_markup"] = markup
            self._messages[(chat_id, message["message_id"])] = message
            self._sent_at[(chat_id, message["message_id"])] = time.time()
            return {"ok": True, "result": dict(message)}

    def _own_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat_id(params)
        message_id = _as_int("message_id", params.get("message_id", ""))
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise bad_request("message to edit not found")
        if not message.get("from", {}).get("is_bot"):
            raise bad_request("message can't be edited")
        return message

    def _api_editmessagetext(self, params: dict[str, Any]) -> dict[str, Any]:
        text = self._text(params)
        markup = self._markup(params)
        with self._lock:
            message = self._own_message(params)
            self._check_chat(message["chat"]["id"])
            if message["text"] == text and message.get("reply_markup") == markup:
                raise bad_request(
                    "message is not modified: specified new message content and reply markup are exactly the same "
                    "as a current content and reply markup of the message"
                )
            message["text"], message["edit_date"] = text, int(time.time())
            if markup is None:
                message.pop("reply_markup", None)
            else:
                message["reply_markup"] = markup
            return {"ok": True, "result": dict(message)}

    def _api_editmessagereplymarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        markup = self._markup(params)
        with self._lock:
            message = self._own_message(params)
            self._check_chat(message["chat"]["id"])
            if message.get("reply_markup") == markup:
                raise bad_request("message is not modified")
            if markup is None:
                message.pop("reply_markup", None)
            else:
                message["reply_markup"] = markup
            return {"ok": True, "result": dict(message)}

    def _api_answercallbackquery(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("callback_query_id"):
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        text = str(params.get("text", "") or "")
        if len(text) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        with self._lock:
            self._answered.append({"callback_query_id": str(params["callback_query_id"]), "text": text})
        return {"ok": True, "result": True}

    def _api_setmycommands(self, params: dict[str, Any]) -> dict[str, Any]:
        commands = params.get("commands", [])
        if isinstance(commands, str):
            try:
                commands = json.loads(commands)
            except json.JSONDecodeError:
                raise bad_request("can't parse commands JSON array") from None
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("can't parse commands JSON array")
        for item in commands:
            if not isinstance(item, dict) or not re.fullmatch(r"[a-z0-9_]{1,32}", str(item.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(item.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        language = str(params.get("language_code", "") or "")
        with self._lock:
            self._commands[language] = [dict(item) for item in commands]
        return {"ok": True, "result": True}

    def _api_getmycommands(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": self.commands(str(params.get("language_code", "") or ""))}

    def _api_getupdates(self, params: dict[str, Any]) -> dict[str, Any]:
        offset = _as_int("offset", params["offset"]) if "offset" in params else None
        limit = min(max(_as_int("limit", params.get("limit", 100)), 1), 100)
        timeout = min(max(_as_int("timeout", params.get("timeout", 0)), 0), 50)
        if "allowed_updates" in params:
            allowed = _as_str_list("allowed_updates", params["allowed_updates"])
        deadline = time.monotonic() + timeout
        with self._changed:
            if "allowed_updates" in params:
                self._allowed_updates = allowed
            while True:
                if self._webhook_url:
                    raise ApiError(
                        409,
                        "Conflict: can't use getUpdates method while webhook is active; "
                        "use deleteWebhook to delete the webhook first",
                    )
                if offset is not None and offset < 0:  # the last -offset updates; older ones are forgotten
                    self._queue = self._queue[offset:]
                elif offset is not None:  # confirms every update below offset
                    self._queue = [item for item in self._queue if int(item["update_id"]) >= offset]
                remaining = deadline - time.monotonic()
                if self._queue or remaining <= 0 or self._stopping.is_set():
                    return {"ok": True, "result": [dict(item) for item in self._queue[:limit]]}
                self._changed.wait(timeout=remaining)


class _Handler(BaseHTTPRequestHandler):
    api: FakeTelegram
    protocol_version = "HTTP/1.1"
    server_version = "nginx/1.18.0"  # what api.telegram.org announces
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # the request line holds the token: stay quiet
        return

    def do_GET(self) -> None:
        self._run()

    def do_POST(self) -> None:
        self._run()

    def _run(self) -> None:
        parts = urlsplit(self.path)
        try:
            params = self._params(parts.query)
        except ApiError as exc:
            self._send(exc.code, exc.body())
            return
        status, body = self.api.handle(parts.path, params)
        self._send(status, body)

    def _params(self, query: str) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return params
        content_type = self.headers.get("Content-Type", "")
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise bad_request("can't parse JSON object") from None
            if not isinstance(body, dict):
                raise bad_request("can't parse JSON object")
            params.update(body)
        elif kind == "application/x-www-form-urlencoded":
            params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        elif kind == "multipart/form-data":
            params.update(dict(_multipart(content_type, raw)))
        return params

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        self.send_response(status, phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _multipart(content_type: str, raw: bytes) -> Iterator[tuple[str, str]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise bad_request("can't parse multipart form")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name and part.get_filename() is None and isinstance(payload, bytes):
            yield str(name), payload.decode("utf-8", "replace")
