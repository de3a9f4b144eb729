"""`check_webhook`: the Telegram webhook points at the target with no delivery error since the switch."""

from __future__ import annotations

from dataclasses import dataclass, field

from timetodo.core.logging import mask_secrets
from timetodo.ops.adapters.telegram import TelegramClient, TelegramError
from timetodo.ops.migrate.validate.common import Verdict


@dataclass
class WebhookCheck(Verdict):
    expected_url: str
    since: float
    url: str | None = None
    pending_update_count: int | None = None
    last_error_date: int | None = None
    last_error: str | None = None
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
