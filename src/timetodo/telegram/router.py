"""HTTP side of the bot: the webhook Telegram calls and the account-linking endpoints.

The webhook checks `X-Telegram-Bot-Api-Secret-Token` in constant time (wrong or missing → 401, nothing read
further), answers as soon as the update is claimed and processes it afterwards. While maintenance is on it answers
503, so Telegram keeps the update and delivers it again later (after a migration: to the new host).

Two requests only a holder of the secret can make (Telegram never sends these headers):
* `X-Timetodo-Probe: 1` — the update is processed before the answer, which lists what the bot sent for it
  (`{"ok": true, "probe": {"sent": [{"method", "chat_id", "message_id"}]}}`); `timetodo migrate validate` uses
  it to see the bot answer on a new host;
* `X-Timetodo-Relayed-Update: 1` — an update an old, frozen host had accepted, sent on by its runtime after a
  migration's switch; claimed in a space of its own (see `service.claim_update`).
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiogram.exceptions import TelegramAPIError
from fastapi import APIRouter, Request, Response, status

from timetodo.core.deps import API_PREFIX, SessionDep, SettingsDep, UserIdDep
from timetodo.core.errors import AppError, ErrorCode, MaintenanceActive, NotFound, Unauthorized
from timetodo.core.responses import json_response
from timetodo.core.settings import Settings
from timetodo.telegram import repository, service
from timetodo.telegram.runtime import RELAY_HEADER, SECRET_HEADER, TelegramRuntime
from timetodo.telegram.schemas import LinkOut, LinkStatus

router = APIRouter(prefix=API_PREFIX, tags=["telegram"])
webhook_router = APIRouter(prefix=API_PREFIX)
"""The webhook alone: the bot's hot path, included by the app before the API's routers so that it is matched first;
it takes no dependencies (it reads its body and headers itself)."""
MAX_UPDATE_BYTES = 1 << 20
PROBE_HEADER = "X-Timetodo-Probe"


def _runtime(request: Request) -> TelegramRuntime:
    runtime: TelegramRuntime | None = getattr(request.app.state, "telegram", None)
    if runtime is None:
        raise NotFound("The Telegram bot is not configured (TELEGRAM_BOT_TOKEN is unset)")
    return runtime


@webhook_router.post("/telegram/webhook", include_in_schema=False)
async def webhook(request: Request) -> Response:
    runtime = _runtime(request)
    settings: Settings = request.app.state.settings
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    given = request.headers.get(SECRET_HEADER, "")
    if expected is None or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("wrong or missing secret token", code=ErrorCode.invalid_token)
    if await request.app.state.maintenance_cache.enabled():
        raise MaintenanceActive(settings.MAINTENANCE_RETRY_AFTER)
    body = await request.body()
    if len(body) > MAX_UPDATE_BYTES:
        raise AppError("the update is too large", code=ErrorCode.payload_too_large, status_code=413)
    try:
        update: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AppError("the body is not JSON", code=ErrorCode.malformed_json, status_code=400) from None
    update_id = update.get("update_id") if isinstance(update, dict) else None
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        raise AppError("an update needs an integer update_id", code=ErrorCode.validation_error, status_code=400)
    if not await runtime.claim(update_id, relayed=request.headers.get(RELAY_HEADER) == "1"):
        return json_response({"ok": True, "duplicate": True})
    if request.headers.get(PROBE_HEADER) == "1":
        return json_response({"ok": True, "probe": {"sent": await runtime.probe(update)}})
    runtime.spawn(update)
    return json_response({"ok": True})


@router.post("/telegram/link", response_model=LinkOut, status_code=status.HTTP_201_CREATED)
async def create_link(request: Request, user_id: UserIdDep, session: SessionDep, settings: SettingsDep) -> LinkOut:
    """A one-time deep link (10 minutes) that links the Telegram chat which opens it to your account."""
    runtime = _runtime(request)
    try:
        username = await runtime.username()
    except (TelegramAPIError, OSError) as exc:  # getMe failed: the link needs the bot's username
        raise AppError(
            "the Telegram Bot API is unreachable; try again later",
            code=ErrorCode.service_unavailable,
            status_code=503,
            headers={"Retry-After": "30"},
        ) from exc
    token, expires = await service.create_link_token(session, user_id, settings.MAINTENANCE_RETRY_AFTER)
    return LinkOut(
        url=f"https://t.me/{username}?start={token}", token=token, command=f"/start {token}", expires_at=expires
    )


@router.get("/telegram/link", response_model=LinkStatus)
async def link_status(user_id: UserIdDep, session: SessionDep) -> LinkStatus:
    link = await repository.link_of_user(session, user_id)
    if link is None:
        return LinkStatus(linked=False)
    return LinkStatus(linked=True, chat_id=link.chat_id, linked_at=link.linked_at)


@router.delete("/telegram/link", status_code=status.HTTP_204_NO_CONTENT)
async def delete_link(user_id: UserIdDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Unlink your Telegram chat (nothing happens when none is linked)."""
    await service.unlink_user(session, user_id, settings.MAINTENANCE_RETRY_AFTER)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
