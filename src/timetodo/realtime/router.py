"""`WS /api/v1/ws`: authenticate with the first message, then receive this user's events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from timetodo.core.accounts import AccountStates
from timetodo.core.deps import API_PREFIX
from timetodo.core.errors import AppError
from timetodo.core.events import EventHub
from timetodo.core.security import decode_access_token

router = APIRouter(prefix=API_PREFIX, tags=["realtime"])
log = logging.getLogger("timetodo.realtime")

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_AUTH_FAILED = 4401
CLOSE_AUTH_TIMEOUT = 4408


async def _receive_text(ws: WebSocket) -> str | None:
    """The next text frame; None for a binary frame. Raises WebSocketDisconnect when the client has gone."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    return text if isinstance(text, str) else None


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


_CLOSED = object()


async def _parsed_or_closed(ws: WebSocket, raw: str | None) -> Any:
    """The client's message as JSON, or `_CLOSED` once the socket is closed with 1003 (a binary frame, not JSON)."""
    if raw is None:
        await _close(ws, CLOSE_UNSUPPORTED, "messages must be JSON text frames")
        return _CLOSED
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        await _close(ws, CLOSE_UNSUPPORTED, "messages must be JSON")
        return _CLOSED


@router.websocket("/ws")
async def events_socket(ws: WebSocket) -> None:
    """Protocol: send `{"type":"auth","token":"<access token>"}` first (within the auth timeout); then the server
    sends `{"type":"ready"}`, events `{"type":"task.created","data":{...},"ts":...}` and `{"type":"ping"}` every
    few seconds; answer pings with `{"type":"pong"}` (any message counts). Close codes: 4401 bad token,
    4408 no auth in time, 1003 not JSON, 1008 protocol violation, 1001 server going away."""
    settings = ws.app.state.settings
    hub: EventHub = ws.app.state.events
    await ws.accept()
    try:
        raw = await asyncio.wait_for(_receive_text(ws), settings.WS_AUTH_TIMEOUT_SECONDS)
    except TimeoutError:
        await _close(ws, CLOSE_AUTH_TIMEOUT, "authentication timeout: send {type: auth, token} first")
        return
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return
    message = await _parsed_or_closed(ws, raw)
    if message is _CLOSED:
        return
    if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(message.get("token"), str):
        await _close(ws, CLOSE_POLICY, "the first message must be {type: auth, token}")
        return
    accounts: AccountStates = ws.app.state.accounts
    try:
        payload = decode_access_token(settings.SECRET_KEY.get_secret_value(), message["token"])
        user_id = await accounts.check(payload)
    except (AppError, ValueError, KeyError):
        await _close(ws, CLOSE_AUTH_FAILED, "invalid or expired token")
        return

    async def still_valid() -> bool:
        """Re-checked on every ping: the token has not expired and its account still accepts it."""
        if float(payload.get("exp", 0)) <= time.time():
            return False
        try:
            await accounts.check(payload)
        except AppError:
            return False
        return True

    await hub.add(user_id, ws)
    try:
        await ws.send_text('{"type":"ready"}')
        await _serve(ws, settings.WS_PING_SECONDS, still_valid)
    finally:
        hub.remove(user_id, ws)


async def _serve(ws: WebSocket, ping_seconds: float, still_valid: Callable[[], Awaitable[bool]]) -> None:
    """Read client messages, ping on silence, and drop the socket after two silent ping intervals. At least every
    ping interval the token is re-checked: an expired token or an ended session is closed with 4401."""
    loop = asyncio.get_running_loop()
    silent = 0
    checked = loop.time()
    while True:
        try:
            raw = await asyncio.wait_for(_receive_text(ws), ping_seconds)
        except TimeoutError:
            raw = ""
            silent += 1
        except (WebSocketDisconnect, RuntimeError, KeyError):
            return
        if loop.time() - checked >= ping_seconds:
            checked = loop.time()
            if not await still_valid():
                await _close(ws, CLOSE_AUTH_FAILED, "the token expired or the session ended; authenticate again")
                return
        if raw == "":
            if silent > 2:
                await _close(ws, CLOSE_POLICY, "no pong received")
                return
            try:
                await ws.send_text('{"type":"ping"}')
            except Exception:
                return
            continue
        silent = 0
        message = await _parsed_or_closed(ws, raw)
        if message is _CLOSED:
            return
        if isinstance(message, dict) and message.get("type") == "ping":
            await ws.send_text('{"type":"pong"}')


async def close_all(hub: EventHub) -> None:
    """On shutdown: tell every client we are going away (1001) so it reconnects to another instance."""
    sockets = [sock for group in list(hub.sockets.values()) for sock in list(group)]
    await asyncio.gather(
        *(_close(sock, CLOSE_GOING_AWAY, "server restarting") for sock in sockets if isinstance(sock, WebSocket)),
        return_exceptions=True,
    )


@contextlib.contextmanager
def going_away_on_signals(hub: EventHub) -> Iterator[None]:
    """While serving under Uvicorn: on SIGTERM/SIGINT, close every socket with 1001 ("going away") *before* Uvicorn's
    own shutdown, which would otherwise cut them with 1012. Uvicorn's handlers still run, right after ours."""
    loop = asyncio.get_running_loop()
    installed: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue  # not under Uvicorn's signal capture (tests, embedded use): nothing to chain to

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(lambda: loop.create_task(close_all(hub)))
            previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            continue
        installed[sig] = previous
    try:
        yield
    finally:
        for restored, previous_handler in installed.items():
            with contextlib.suppress(ValueError):
                signal.signal(restored, previous_handler)
