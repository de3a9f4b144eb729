"""One pure-ASGI middleware for every request: request id, security headers, early maintenance 503,
metrics by route template, and one JSON access-log line."""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from timetodo.core.errors import ErrorCode, error_response
from timetodo.core.logging import request_id_var
from timetodo.core.metrics import HTTP_LATENCY, HTTP_REQUESTS

access_log = logging.getLogger("timetodo.access")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Writes that stay possible in maintenance mode: they write nothing to the database then, or only the shared
# app_state row (admins switching maintenance or forwarding).
MAINTENANCE_EXEMPT = ("/api/v1/admin/", "/api/v1/auth/refresh", "/api/v1/auth/login")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class _RequestIds:
    """Request ids when the client sent none: 32 hex digits, a random 64-bit prefix per process (drawn again in a
    forked child) followed by a counter — unique across processes and restarts without a `uuid4` (a `urandom`
    system call) per request."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_request_ids = _RequestIds()


_metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _children(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and latency histogram's children for these labels, looked up once: `labels()` costs
    ~3 µs a call. Methods × route templates × statuses (unknown paths share "<unmatched>"), at most 10 000."""
    key = (method, route, status)
    children = _metric_children.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route))
        if len(_metric_children) >= 10_000:  # odd methods sent by clients: start over rather than grow
            _metric_children.clear()
        _metric_children[key] = children
    return children


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "<unmatched>"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, force_https: bool = False) -> None:
        self.app = app
        self.force_https = force_https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID_OK.match(incoming) else _request_ids.new()
        token = request_id_var.set(request_id)
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return

        method: str = scope["method"]
        https = self.force_https or scope.get("scheme") == "https"
        status = 500
        start = time.perf_counter()
        extra_headers = [(b"x-request-id", request_id.encode()), *SECURITY_HEADERS]
        if https:
            extra_headers.append(HSTS)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + extra_headers
            await send(message)

        try:
            if method in WRITE_METHODS and await self._maintenance_blocks(scope):
                retry = str(scope["app"].state.settings.MAINTENANCE_RETRY_AFTER)
                response = error_response(
                    503,
                    ErrorCode.maintenance,
                    "The service is in read-only maintenance mode; writes are refused for now",
                    {"Retry-After": retry},
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            counter, latency = _children(method, route, status)
            counter.inc()
            latency.observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s",
                    method,
                    route,
                    status,
                    extra={
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    },
                )
            request_id_var.reset(token)

    @staticmethod
    async def _maintenance_blocks(scope: Scope) -> bool:
        path: str = scope.get("path", "")
        if not path.startswith("/api/") or path.startswith(MAINTENANCE_EXEMPT):
            return False
        flag: Any = getattr(scope["app"].state, "maintenance_cache", None)
        return bool(flag is not None and await flag.enabled())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
