"""`check_webhook`: the Telegram webhook points at the target with no delivery error since the switch.
`probe_bot`: the bot on the target answers an update.

What can be checked honestly against the real Telegram: the Bot API cannot inject an update, and it shows no bot
the messages it sent. So the probe posts a synthetic update — `/ping` from `telegram.probe_chat_id`, a chat that
started the bot (the operator's own) — straight to the target's webhook URL with the secret token and the header
`X-Timetodo-Probe: 1`. The target processes it before answering (reading the chat's link in its database) and
answers with the Bot API requests the bot made for it and the `message_id` the Bot API returned for each. A
`sendMessage` to the probe chat with a message id means Telegram accepted the bot's answer from the new host (the
operator sees "pong" in that chat). The probe's `update_id` is negative: it can never take the id of a real update.
Not covered: that Telegram itself can reach the webhook — `check_webhook` reads that from getWebhookInfo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from timetodo.core.logging import mask_secrets
from timetodo.ops.adapters.telegram import TelegramClient, TelegramError
from timetodo.ops.migrate.validate.common import Verdict

PROBE_HEADER = "X-Timetodo-Probe"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PROBE_TIMEOUT = 30.0


@dataclass
class WebhookCheck(Verdict):
    expected_url: str
    since: float
    url: str | None = None
    pending_update_count: int | None = None
    last_error_date: int | None = None
    last_error: str | None = None
    probe_chat_id: int | None = None
    probe_update_id: int | None = None
    probe_message_id: int | None = None
    probe_seconds: float | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


async def check_webhook(client: TelegramClient, expected_url: str, since: float) -> WebhookCheck:
    """getWebhookInfo: the webhook is `expected_url` and no delivery failed at or after unix time `since`."""
    result = WebhookCheck(mask_secrets(expected_url), since)
    try:
        info = await client.get_webhook_info()
    except TelegramError as exc:
        result.errors.append(f"webhook: {exc}")
        return result
    result.url = mask_secrets(info.url)
    result.pending_update_count = info.pending_update_count
    result.last_error_date = info.last_error_date
    error = info.error_since(since)
    result.last_error = error
    if info.url != expected_url:
        result.errors.append(f"webhook points at {result.url or 'nothing'!r}, expected {result.expected_url!r}")
    if error is not None:
        result.errors.append(f"webhook delivery failed since the switch: {mask_secrets(error)}")
    return result


def probe_update(chat_id: int, update_id: int) -> dict[str, Any]:
    """`/ping` from the private chat `chat_id` (whose user id is the chat id), as Telegram would deliver it."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "timetodo migrate validate"},
            "text": "/ping",
            "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
        },
    }


async def probe_bot(
    result: WebhookCheck, webhook_url: str, secret: str | None, chat_id: int | None, wait: float = PROBE_TIMEOUT
) -> None:
    """Send the probe (see the module) and require the bot's `sendMessage` to `chat_id`, accepted by the Bot API."""
    if chat_id is None:
        result.warnings.append("the bot's answer on the target was not checked: set telegram.probe_chat_id")
        return
    if not secret:
        result.warnings.append("the bot's answer on the target was not checked: set telegram.webhook_secret_env")
        return
    result.probe_chat_id = chat_id
    result.probe_update_id = -time.time_ns() // 1000
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=wait, follow_redirects=False) as http:
            response = await http.post(
                webhook_url,
                json=probe_update(chat_id, result.probe_update_id),
                headers={SECRET_HEADER: secret, PROBE_HEADER: "1"},
            )
    except httpx.HTTPError as exc:
        result.errors.append(f"bot probe: the target's webhook did not answer ({type(exc).__name__}: {exc})")
        return
    result.probe_seconds = round(time.monotonic() - started, 3)
    try:
        body = response.json()
    except ValueError:
        body = None
    sent = body.get("probe", {}).get("sent") if isinstance(body, dict) else None
    if response.status_code != 200 or not isinstance(sent, list):
        result.errors.append(
            f"bot probe: the target's webhook answered {response.status_code} {mask_secrets(response.text[:200])}"
        )
        return
    answers = [
        item
        for item in sent
        if isinstance(item, dict) and item.get("method") == "SendMessage" and item.get("chat_id") == chat_id
    ]
    if not answers or not isinstance(answers[0].get("message_id"), int):
        result.errors.append(f"bot probe: the bot on the target did not answer /ping in chat {chat_id}")
        return
    result.probe_message_id = answers[0]["message_id"]
