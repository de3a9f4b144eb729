"""Abuse limits at the edge of the app: the real client address, and request body size.

Client address: Uvicorn (`serve`) rewrites the client from `X-Forwarded-For` when the peer is in
FORWARDED_ALLOW_IPS, taking the right-most address that is not a trusted proxy — except with `*`, where it takes
the left-most one, which the client wrote itself. `ClientAddressMiddleware` fixes that case: with `*` the client
is the right-most `X-Forwarded-For` entry, i.e. the address the nearest proxy (Render's, nginx) saw and appended;
whatever a client put to the left of it is ignored. Login and registration limits count per this address.

Body size: JSON and form bodies over MAX_JSON_BODY_KB and multipart bodies over MAX_UPLOAD_MB (plus framing) are
refused with 413 `payload_too_large` while streaming — from `Content-Length` before reading, or as soon as the
bytes received pass the limit — so no oversized body is ever held or parsed.
"""

from __future__ import annotations

import ipaddress

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timetodo.core.errors import ErrorCode, error_response

MULTIPART_OVERHEAD = 64 * 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientAddressMiddleware:
    """With FORWARDED_ALLOW_IPS=`*`: the client is the right-most X-Forwarded-For entry (see the module)."""

    def __init__(self, app: ASGIApp, *, forwarded_allow_ips: str) -> None:
        self.app = app
        self.trust_all = forwarded_allow_ips.strip() == "*"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trust_all and scope["type"] in ("http", "websocket"):
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded:
                hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
                if hops:
                    scope["client"] = (hops[-1], 0)
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimitMiddleware:
    """413 for bodies over the limit of their kind, counted while streaming (see the module)."""

    def __init__(self, app: ASGIApp, *, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or "").lower()
        limit = self.upload_limit if content_type.startswith("multipart/") else self.json_limit
        length = _header(scope, b"content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413,
            ErrorCode.payload_too_large,
            f"the request body is larger than {limit} bytes",
            {"Connection": "close"},
        )
        await response(scope, receive, send)
