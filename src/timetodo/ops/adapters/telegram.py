"""Telegram Bot API client for the migration: move the bot's webhook between hosts without losing updates.

https://core.telegram.org/bots/api — every call is `POST {api_base}/bot<token>/<method>` with a JSON body, answered
`{"ok": true, "result": ...}` or `{"ok": false, "error_code": N, "description": "...", "parameters": {...}}`.

The token is a secret: it never appears in an exception, a log line or a repr. URLs are shown as `.../bot***/method`
and a filter on the `httpx` logger masks its request lines the same way.

    async with TelegramClient(token, api_base=config.telegram.api_base) as tg:
        result = await tg.switch_webhook("https://new.example.com/api/v1/telegram/webhook", secret_token=secret)
        if not result.confirmed:
            raise SystemExit(result.error)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from timetodo.core.logging import mask_secrets
from timetodo.ops.errors import EXIT_UNREACHABLE, OpsError

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.telegram.org"
_BOT_SEGMENT = re.compile(r"(/bot)[^/\s\"'?#]+(?=/)")
_HINTS = {
    401: "the bot token was rejected; check the token the configuration points at",
    404: "unknown method or malformed bot token",
    409: "a webhook is active; getUpdates only works without one",
}


def mask_bot_token(text: str, token: str | None = None) -> str:
    """`text` with `/bot<token>/` shown as `/bot***/`, the given token replaced anywhere, and other secrets masked."""
    if token:
        text = text.replace(token, "***")
    return mask_secrets(_BOT_SEGMENT.sub(r"\1***", text))


class _MaskBotTokenFilter(logging.Filter):
    """httpx logs every request line with its URL, which holds the token: rewrite those records masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        if "/bot" in message:
            record.msg, record.args = mask_bot_token(message), None
        return True


def _install_log_filter() -> None:
    # httpx logs request lines on its own logger; httpcore's debug lines hold no URL
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _MaskBotTokenFilter) for existing in logger.filters):
        logger.addFilter(_MaskBotTokenFilter())


_install_log_filter()


class TelegramError(OpsError):
    """The Bot API refused a call (`code` is its error_code) or could not be reached (`code` 0)."""

    def __init__(
        self, code: int, description: str, *, method: str | None = None, retry_after: int | None = None
    ) -> None:
        self.code = code
        self.description = description
        self.method = method
        self.retry_after = retry_after
        super().__init__(description)

    def __str__(self) -> str:
        what = f"Telegram {self.method}" if self.method else "Telegram Bot API call"
        text = (
            f"{what} failed with {self.code}: {self.description}" if self.code else f"{what} failed: {self.description}"
        )
        if self.code == 429 and self.retry_after is not None:
            text += f" (retry after {self.retry_after} s)"
        elif self.code in _HINTS:
            text += f" ({_HINTS[self.code]})"
        return text


class TelegramUnreachable(TelegramError):
    """No answer from the Bot API (connection refused, DNS, TLS, timeout)."""

    exit_code = EXIT_UNREACHABLE


@dataclass
class BotInfo:
    id: int
    is_bot: bool
    first_name: str
    username: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> BotInfo:
        return cls(
            id=int(data["id"]),
            is_bot=bool(data.get("is_bot", True)),
            first_name=str(data.get("first_name", "")),
            username=data.get("username"),
        )


@dataclass
class WebhookInfo:
    """https://core.telegram.org/bots/api#webhookinfo"""

    url: str
    has_custom_certificate: bool
    pending_update_count: int
    ip_address: str | None = None
    last_error_date: int | None = None
    last_error_message: str | None = None
    last_synchronization_error_date: int | None = None
    max_connections: int | None = None
    allowed_updates: list[str] | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> WebhookInfo:
        allowed = data.get("allowed_updates")
        return cls(
            url=str(data.get("url") or ""),
            has_custom_certificate=bool(data.get("has_custom_certificate", False)),
            pending_update_count=int(data.get("pending_update_count") or 0),
            ip_address=data.get("ip_address"),
            last_error_date=_opt_int(data.get("last_error_date")),
            last_error_message=data.get("last_error_message"),
            last_synchronization_error_date=_opt_int(data.get("last_synchronization_error_date")),
            max_connections=_opt_int(data.get("max_connections")),
            allowed_updates=[str(item) for item in allowed] if isinstance(allowed, list) else None,
        )

    def error_since(self, when: float) -> str | None:
        """The last delivery error if it happened at or after unix time `when` (Telegram dates have 1 s resolution)."""
        if self.last_error_date is not None and self.last_error_date >= int(when):
            return self.last_error_message or "unknown delivery error"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SwitchResult:
    """What `switch_webhook` saw: the info before the switch and the last info read after it."""

    url: str
    before: WebhookInfo
    after: WebhookInfo
    switched_at: float
    """Unix time just before setWebhook was sent."""
    elapsed: float
    confirmed: bool
    """getWebhookInfo showed the new URL and no delivery error since the switch."""
    error: str | None = None
    """Why the switch is not confirmed (a delivery error such as "Wrong response from the webhook: 503 ...")."""

    @property
    def pending_before(self) -> int:
        return self.before.pending_update_count

    @property
    def pending_after(self) -> int:
        return self.after.pending_update_count

    @property
    def last_error(self) -> str | None:
        """The delivery error reported since the switch, if any."""
        return _new_error(self.before, self.after, self.switched_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": mask_secrets(self.url),
            "before": {**self.before.to_dict(), "url": mask_secrets(self.before.url)},
            "after": {**self.after.to_dict(), "url": mask_secrets(self.after.url)},
            "switched_at": self.switched_at,
            "elapsed": round(self.elapsed, 3),
            "confirmed": self.confirmed,
            "error": self.error,
        }


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _new_error(before: WebhookInfo, after: WebhookInfo, switched_at: float) -> str | None:
    """A delivery error reported after the switch; the one already shown before it does not count."""
    if (after.last_error_date, after.last_error_message) == (before.last_error_date, before.last_error_message):
        return None
    return after.error_since(switched_at)


class TelegramClient:
    """Async Bot API client. Use as `async with`, or call methods directly (each then opens its own connection).

    HTTP 429 answers are retried after their `retry_after` (at most `retries` times and only when the wait is at most
    `max_retry_after` seconds); 5xx answers and network errors are retried with a short backoff. Every other error
    raises `TelegramError`.
    """

    def __init__(
        self,
        token: str,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 10,
        *,
        retries: int = 3,
        max_retry_after: float = 60,
        backoff: float = 0.5,
    ) -> None:
        if not token or any(char.isspace() or char in "/?#" for char in token):
            raise ValueError("malformed Telegram bot token (empty, or holds whitespace, '/', '?' or '#')")
        self._token = token
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"TelegramClient(api_base={mask_secrets(self.api_base)!r}, token='***')"

    async def __aenter__(self) -> TelegramClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _mask(self, text: str) -> str:
        return mask_bot_token(text, self._token)

    def method_url(self, method: str) -> str:
        """The masked URL of a method, for messages."""
        return f"{mask_secrets(self.api_base)}/bot***/{method}"

    # ---- transport ---------------------------------------------------------------------------------------------

    async def _post(self, method: str, params: Mapping[str, Any], request_timeout: float) -> httpx.Response:
        url = f"{self.api_base}/bot{self._token}/{method}"
        if self._http is not None:
            return await self._http.post(url, json=dict(params), timeout=request_timeout)
        async with httpx.AsyncClient(timeout=request_timeout) as http:
            return await http.post(url, json=dict(params))

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, request_timeout: float | None = None
    ) -> Any:
        """Call a Bot API method and return its `result`; raises TelegramError. `request_timeout` overrides `timeout`."""
        params = {key: value for key, value in (params or {}).items() if value is not None}
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._post(
                    method, params, self.timeout if request_timeout is None else request_timeout
                )
            except httpx.HTTPError as exc:
                reason = self._mask(str(exc) or type(exc).__name__)
                if attempt <= self.retries:
                    log.warning("Telegram %s: no answer (%s), retrying", method, reason)
                    await asyncio.sleep(self.backoff * attempt)
                    continue
                raise TelegramUnreachable(
                    0, f"cannot reach {self.method_url(method)}: {reason}", method=method
                ) from None
            code, description, retry_after, result = self._parse(response)
            if code == 0:
                log.debug("Telegram %s ok", method)
                return result
            if code == 429 and attempt <= self.retries:
                wait = 1 if retry_after is None else retry_after
                if wait <= self.max_retry_after:
                    log.warning("Telegram %s: too many requests, retrying in %s s", method, wait)
                    await asyncio.sleep(wait)
                    continue
            if code >= 500 and attempt <= self.retries:
                log.warning("Telegram %s: server error %s (%s), retrying", method, code, description)
                await asyncio.sleep(self.backoff * attempt)
                continue
            raise TelegramError(code, description, method=method, retry_after=retry_after)

    def _parse(self, response: httpx.Response) -> tuple[int, str, int | None, Any]:
        """(error code or 0, description, retry_after, result)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            code = response.status_code if response.status_code >= 400 else 502
            return code, f"unexpected answer (HTTP {response.status_code}, not a Bot API JSON object)", None, None
        if body["ok"]:
            return 0, "", None, body.get("result")
        raw_code = body.get("error_code")
        code = raw_code if isinstance(raw_code, int) and raw_code > 0 else response.status_code
        description = self._mask(str(body.get("description") or f"HTTP {response.status_code}"))
        parameters = body.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        return code, description, retry_after if isinstance(retry_after, int) else None, None

    # ---- methods -----------------------------------------------------------------------------------------------

    async def get_me(self) -> BotInfo:
        result = await self.call("getMe")
        return BotInfo.from_api(result)

    async def get_webhook_info(self) -> WebhookInfo:
        result = await self.call("getWebhookInfo")
        return WebhookInfo.from_api(result)

    async def set_webhook(
        self,
        url: str,
        *,
        secret_token: str | None = None,
        drop_pending_updates: bool = False,
        max_connections: int | None = None,
        allowed_updates: Sequence[str] | None = None,
    ) -> bool:
        """setWebhook. `allowed_updates=None` keeps the bot's current setting (the API's rule); the others default."""
        params: dict[str, Any] = {
            "url": url,
            "drop_pending_updates": drop_pending_updates,
            "secret_token": secret_token,
            "max_connections": max_connections,
            "allowed_updates": None if allowed_updates is None else list(allowed_updates),
        }
        return bool(await self.call("setWebhook", params))

    async def delete_webhook(self, drop_pending_updates: bool = False) -> bool:
        return bool(await self.call("deleteWebhook", {"drop_pending_updates": drop_pending_updates}))

    async def get_updates(
        self, *, offset: int | None = None, limit: int | None = None, long_poll: int = 0
    ) -> list[dict[str, Any]]:
        """getUpdates (only without a webhook: the API answers 409 otherwise); `long_poll` is its `timeout`."""
        params = {"offset": offset, "limit": limit, "timeout": long_poll}
        result = await self.call("getUpdates", params, request_timeout=self.timeout + long_poll)
        return [dict(item) for item in result or []]

    async def switch_webhook(
        self,
        url: str,
        *,
        secret_token: str | None,
        timeout: float = 30,  # noqa: ASYNC109 - a deadline for the confirmation polls, not for one call
        settle: float = 1.0,
        poll_interval: float = 0.25,
    ) -> SwitchResult:
        """Point the webhook at `url` keeping every pending update, and confirm it with getWebhookInfo.

        Reads the info first, sends setWebhook with drop_pending_updates=false and the previous max_connections and
        allowed_updates, then polls getWebhookInfo until it shows `url` with no delivery error since the switch for
        `settle` seconds (so a failing first delivery is seen), or until `timeout`. A delivery error ends the wait at
        once with `confirmed=False`. Errors of the calls themselves (bad URL, wrong token) raise TelegramError.
        """
        before = await self.get_webhook_info()
        switched_at = time.time()
        started = time.monotonic()
        deadline = started + timeout
        await self.set_webhook(
            url,
            secret_token=secret_token,
            drop_pending_updates=False,
            max_connections=before.max_connections,
            allowed_updates=before.allowed_updates,
        )
        matched_at: float | None = None
        while True:
            after = await self.get_webhook_info()
            now = time.monotonic()
            error = _new_error(before, after, switched_at)
            confirmed = False
            if after.url != url:
                matched_at = None
                problem = f"getWebhookInfo still shows {mask_secrets(after.url) or 'no webhook'!r}"
            elif error is not None:
                problem = f"delivery to the new webhook failed: {error}"
            else:
                problem = None
                matched_at = now if matched_at is None else matched_at
                confirmed = now - matched_at >= settle or now >= deadline
            if confirmed or error is not None or now >= deadline:
                result = SwitchResult(
                    url=url,
                    before=before,
                    after=after,
                    switched_at=switched_at,
                    elapsed=now - started,
                    confirmed=confirmed,
                    error=None if confirmed else problem,
                )
                self._log_switch(result)
                return result
            await asyncio.sleep(max(0.0, min(poll_interval, deadline - now)))

    def _log_switch(self, result: SwitchResult) -> None:
        target = mask_secrets(result.url)
        if result.confirmed:
            log.info(
                "Telegram webhook switched to %s in %.1f s; pending updates %d -> %d",
                target,
                result.elapsed,
                result.pending_before,
                result.pending_after,
            )
        else:
            log.warning("Telegram webhook switch to %s not confirmed: %s", target, result.error)
