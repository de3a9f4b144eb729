"""`WS /api/v1/ws`: authenticate with the first message, then receive this user's events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

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


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


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
        raw = await asyncio.wait_for(ws.receive_text(), settings.WS_AUTH_TIMEOUT_SECONDS)
    except TimeoutError:
        await _close(ws, CLOSE_AUTH_TIMEOUT, "authentication timeout: send {type: auth, token} first")
        return
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        await _close(ws, CLOSE_UNSUPPORTED, "messages must be JSON")
        return
    if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(message.get("token"), str):
        await _close(ws, CLOSE_POLICY, "the first message must be {type: auth, token}")
        return
    try:
        user_id = int(decode_access_token(settings.SECRET_KEY.get_secret_value(), message["token"])["sub"])
    except (AppError, ValueError, KeyError):
        await _close(ws, CLOSE_AUTH_FAILED, "invalid or expired token")
        return

    hub.add(user_id, ws)
    try:
        await ws.send_text('{"type":"ready"}')
        await _serve(ws, settings.WS_PING_SECONDS)
    finally:
        hub.remove(user_id, ws)


async def _serve(ws: WebSocket, ping_seconds: float) -> None:
    """Read client messages, ping on silence, and drop the socket after two silent ping intervals."""
    silent = 0
    while True:
        try:
            raw = await asyncio.wait_for(ws.receive_text(), ping_seconds)
        except TimeoutError:
            silent += 1
            if silent > 2:
                await _close(ws, CLOSE_POLICY, "no pong received")
                return
            try:
                await ws.send_text('{"type":"ping"}')
            except Exception:
                return
            continue
        except (WebSocketDisconnect, RuntimeError, KeyError):
            return
        silent = 0
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _close(ws, CLOSE_UNSUPPORTED, "messages must be JSON")
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
