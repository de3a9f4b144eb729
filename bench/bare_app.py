"""The baseline: a bare Starlette endpoint serving the same 50-task JSON page as the API, served by the same
Uvicorn setup (uvloop + httptools, the same number of workers). `BARE_PAYLOAD` names a file holding the page (the
benchmark writes one real `GET /api/v1/tasks?limit=50` answer there); without it, a small placeholder."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_source = os.environ.get("BARE_PAYLOAD")
PAYLOAD = Path(_source).read_bytes() if _source else b'{"results":[],"next_cursor":null}'


async def bare(_request: Request) -> Response:
    return Response(PAYLOAD, media_type="application/json")


app = Starlette(routes=[Route("/bare", bare)])
