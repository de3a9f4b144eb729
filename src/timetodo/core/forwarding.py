"""Forwarding mode: after a migration's switch, the old host proxies every API request and WebSocket to the new one.

Clients whose DNS still points at the old host must see no error once writes have moved: the migration toolkit
sets forwarding on the old host (`PUT /api/v1/admin/forwarding {"target": "https://new.example.com"}`) at the
switch, and ends it with `timetodo migrate finish` (`DELETE`) or lets it lapse (`minutes`). The setting lives in
the shared `app_state` row, so every instance follows it within `MAINTENANCE_CACHE_SECONDS`.

While it is on:
- every request under `/api/` — except this host's own admin endpoints (`/api/v1/admin/…`, so the operator can
  always see and end it) — is sent to the target: same method, path, query and headers (`Authorization`,
  `Idempotency-Key`, `X-Request-ID` included; hop-by-hop headers dropped), the body streamed through as it
  arrives (an upload is never held whole), `Content-Length` kept so an idempotent upload retried on the other
  host fingerprints the same;
- the client's address travels as `X-Forwarded-For` (the address this host resolved, one value), with
  `X-Forwarded-Proto`/`-Host`: add the old host to the target's `FORWARDED_ALLOW_IPS` so limits and logs see
  the real client;
- the answer streams back unchanged (status, headers, body, `Range` responses);
- WebSockets (`/api/v1/ws`) are relayed frame by frame both ways; the target's close code reaches the client;
- forwarding wins over maintenance mode: a frozen old host answers from the new one instead of 503;
- `/health*`, `/metrics` and everything outside `/api/` stay local.
A target that cannot be reached answers `502 {"error": "bad_gateway"}`; a WebSocket is closed with 1011.

Loops are refused, not followed: every forwarded request carries `X-Timetodo-Forwarded`, and a host that is itself
forwarding answers such a request `508 {"error": "forwarding_loop"}` (a WebSocket: close 1011) — what happens when
the target URL still resolves to the old host (DNS not moved yet): the operator sees the cause at once instead of
a request bouncing until every connection is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from timetodo.core.database import utcnow
from timetodo.core.errors import DATABASE_UNAVAILABLE, ErrorCode, error_response
from timetodo.core.maintenance import APP_STATE_ID, AppState, update_app_state
from timetodo.core.metrics import HTTP_LATENCY, HTTP_REQUESTS
from timetodo.core.singleflight import SingleFlight

log = logging.getLogger("timetodo.forwarding")

LOCAL_PREFIXES = ("/api/v1/admin/",)
# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the proxy sets itself
_DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    }
)
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_WS_DROP = _DROP_REQUEST | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-accept",
    b"content-length",
}
_CLIENT_DEFAULTS = (b"accept", b"accept-encoding", b"user-agent")
TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=300.0, pool=10.0)
WS_CLOSE_UPSTREAM_FAILED = 1011
WS_CLOSE_GOING_AWAY = 1001
ROUTE_LABEL = "<forwarded>"


# the setting ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarding:
    target: str | None
    until: datetime | None

    def active(self, now: datetime | None = None) -> bool:
        return self.target is not None and (self.until is None or (now or utcnow()) < self.until)


def normalise_target(url: str) -> str:
    """`scheme://host[:port][/prefix]` without a trailing slash; ValueError naming what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("target must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("target must not carry a query, a fragment or credentials")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


async def get_forwarding(session: AsyncSession) -> Forwarding:
    state = await session.get(AppState, APP_STATE_ID, populate_existing=True)
    if state is None:
        raise RuntimeError("app_state row is missing: run `timetodo db upgrade`")
    return Forwarding(state.forward_to, state.forward_until)


async def set_forwarding(session: AsyncSession, target: str | None, minutes: int | None = None) -> Forwarding:
    """Start (`target`) or end (`None`) forwarding for every instance; `minutes` bounds it in time."""
    until = utcnow() + timedelta(minutes=minutes) if target is not None and minutes else None
    await update_app_state(
        session, forward_to=normalise_target(target) if target is not None else None, forward_until=until
    )
    return await get_forwarding(session)


class ForwardingCache:
    """The setting as this process last read it, re-read at most every `ttl` seconds."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._maker = maker
        self._ttl = ttl
        self._value = Forwarding(None, None)
        self._checked = float("-inf")
        # the requests in flight when the copy expires share one read (`timetodo.core.singleflight`)
        self.refresh = SingleFlight(self._refresh)

    def set(self, value: Forwarding) -> None:
        self._value = value
        self._checked = time.monotonic()

    async def _refresh(self) -> None:
        try:
            async with self._maker() as session:
                self.set(await get_forwarding(session))
        except DATABASE_UNAVAILABLE as exc:
            # keep the last known setting: the request goes on and gets its own clear answer (503 when the
            # database is still away), instead of failing here without an error envelope
            log.warning("forwarding setting not refreshed: database unavailable", extra={"error": repr(exc)})

    async def target(self) -> str | None:
        if time.monotonic() - self._checked >= self._ttl:
            await self.refresh()
        return self._value.target if self._value.active() else None


# the proxy ------------------------------------------------------------------------------------------------------


class ForwardingMiddleware:
    """Outermost middleware: hands `/api/` traffic to the target while forwarding is on (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = await self._target(scope)
        if target is None:
            await self.app(scope, receive, send)
        elif any(name == LOOP_HEADER for name, _ in scope["headers"]):
            await _refuse_loop(target, scope, receive, send)
        elif scope["type"] == "http":
            await self._forward_http(target, scope, receive, send)
        else:
            await _relay_websocket(target, scope, receive, send)

    async def _target(self, scope: Scope) -> str | None:
        if scope["type"] not in ("http", "websocket"):
            return None
        path: str = scope.get("path", "")
        if not path.startswith("/api/") or path.startswith(LOCAL_PREFIXES):
            return None
        cache: ForwardingCache | None = getattr(scope["app"].state, "forwarding", None)
        return await cache.target() if cache is not None else None

    async def _forward_http(self, target: str, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        start = time.perf_counter()
        status = 502
        client = http_client(scope["app"].state)
        headers = _request_headers(scope)
        has_body = any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])
        request = client.build_request(
            method,
            _target_url(target, scope, websocket=False),
            headers=headers,
            content=_body(receive) if has_body else None,
        )
        sent = {name for name, _ in scope["headers"]}
        for name in _CLIENT_DEFAULTS:  # httpx adds these; the target must see the client's request as it was
            if name not in sent:
                del request.headers[name.decode()]
        try:
            response = await client.send(request, stream=True)
        except _ClientGone:
            status = 499  # the client went away while sending its body: nothing to answer
            return
        except (httpx.HTTPError, OSError) as exc:
            log.warning("forwarding failed", extra={"target": target, "error": type(exc).__name__})
            await error_response(502, ErrorCode.bad_gateway, f"The new host ({target}) did not answer")(
                scope, receive, send
            )
        else:
            status = response.status_code
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _DROP_RESPONSE],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()
        finally:
            HTTP_REQUESTS.labels(method, ROUTE_LABEL, str(status)).inc()
            HTTP_LATENCY.labels(method, ROUTE_LABEL).observe(time.perf_counter() - start)


def http_client(state: Any) -> httpx.AsyncClient:
    """The process's client to the target (one connection pool), made on first use; closed by the app's lifespan."""
    client: httpx.AsyncClient | None = getattr(state, "forward_client", None)
    if client is None:
        client = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False)
        state.forward_client = client
    return client


def _target_url(target: str, scope: Scope, *, websocket: bool) -> str:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    url = target + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    if websocket:
        url = "ws" + url.removeprefix("http")  # http → ws, https → wss
    return url


LOOP_HEADER = b"x-timetodo-forwarded"


def _forwarded_for(scope: Scope) -> list[tuple[bytes, bytes]]:
    client = scope.get("client")
    added = [
        (b"x-forwarded-proto", b"https" if scope.get("scheme") in ("https", "wss") else b"http"),
        (LOOP_HEADER, b"1"),
    ]
    if client:
        added.append((b"x-forwarded-for", str(client[0]).encode()))
    for name, value in scope["headers"]:
        if name == b"host":
            added.append((b"x-forwarded-host", value))
    return added


def _request_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST]
    return kept + _forwarded_for(scope)


async def _refuse_loop(target: str, scope: Scope, receive: Receive, send: Send) -> None:
    log.error("forwarding loop: a forwarded request reached a forwarding host", extra={"target": target})
    if scope["type"] == "websocket":
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": WS_CLOSE_UPSTREAM_FAILED, "reason": "forwarding loop"})
        return
    detail = (
        f"this host forwards to {target}, and that request came from a forwarding host: {target} still leads back "
        "here (DNS not moved yet?); forward to the new host's direct address"
    )
    await error_response(508, ErrorCode.forwarding_loop, detail)(scope, receive, send)


class _ClientGone(Exception):
    pass


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


# WebSockets -----------------------------------------------------------------------------------------------------


async def _relay_websocket(target: str, scope: Scope, receive: Receive, send: Send) -> None:
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in [*scope["headers"], *_forwarded_for(scope)]
        if k not in _WS_DROP or k in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", LOOP_HEADER)
    ]
    try:
        upstream = await connect(
            _target_url(target, scope, websocket=True),
            additional_headers=headers,
            open_timeout=10,
            ping_interval=None,
            max_size=2**20,
            compression=None,
        )
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        log.warning("forwarding a WebSocket failed", extra={"target": target, "error": type(exc).__name__})
        # accept, then close with a code the client can act on (closing before accepting would be a bare 403)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": WS_CLOSE_UPSTREAM_FAILED})
        return
    await send({"type": "websocket.accept"})
    to_target = asyncio.create_task(_client_to_upstream(receive, upstream))
    to_client = asyncio.create_task(_upstream_to_client(upstream, send))
    try:
        await asyncio.wait({to_target, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_target, to_client):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                await task
        await upstream.close()


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=int(message.get("code") or 1000))
            return
        if message.get("text") is not None:
            await upstream.send(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send(message["bytes"])


async def _upstream_to_client(upstream: ClientConnection, send: Send) -> None:
    try:
        async for data in upstream:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed:
        pass
    code = upstream.close_code
    # 1005/1006 (no code / abnormal) must not be sent: tell the client to reconnect instead
    if code is None or code in (1005, 1006, 1015):
        code = WS_CLOSE_GOING_AWAY
    await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})
