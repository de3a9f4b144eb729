"""A fast path for the busiest endpoints: plain code in front of FastAPI's dependency solving.

`router = APIRouter(route_class=FastPathRoute)`, then `@fast_path(handler)` on an endpoint: every request to that
endpoint first goes to `handler(request)`, which either answers it (a `Response`) or returns None — and then the
request takes FastAPI's ordinary path (dependencies, parameter and body validation, the endpoint), exactly as if
there were no fast path. FastAPI's solving costs ~60–100 µs per request (a third of the list endpoint's CPU).

Rules for a handler (what keeps the two paths equivalent):
- it answers only requests it fully understands (known parameters, well-formed values, a body that validates),
  by calling the same endpoint function with the same arguments FastAPI would have passed; anything unusual — a
  parameter to check, a body that does not validate — returns None, so every error answer (422 with its `loc`s)
  comes from FastAPI itself;
- authentication runs as in the dependency (`timetodo.core.deps.user_id_of`), and after the body has been read and
  validated, as FastAPI orders them (a malformed body is answered by the ordinary path: 422 before 401);
- exceptions it raises (401, 404, 503…) reach the app's exception handlers as the endpoint's would: the handler
  runs inside the route's ASGI app, like the endpoint.
The route keeps everything else: its path, methods, OpenAPI schema, `scope["route"]` (metrics by template),
middleware and exception handling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

FastHandler = Callable[[Request], Awaitable[Response | None]]
ENABLED = True  # tests switch it off to compare both paths' answers
E = TypeVar("E", bound=Callable[..., Any])
_ATTR = "__timetodo_fast_path__"


def fast_path(handler: FastHandler) -> Callable[[E], E]:
    """Mark an endpoint: `handler` is tried before FastAPI's dependency solving (see the module)."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, _ATTR, handler)
        return endpoint

    return mark


class FastPathRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        ordinary = super().get_route_handler()
        fast: FastHandler | None = getattr(self.endpoint, _ATTR, None)
        if fast is None:
            return ordinary

        async def handler(request: Request) -> Response:
            response = await fast(request) if ENABLED else None
            return response if response is not None else await ordinary(request)

        return handler
