"""The baseline: a bare Starlette JSON endpoint, served by the same Uvicorn setup as the API."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def bare(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "results": [], "next_cursor": None})


app = Starlette(routes=[Route("/bare", bare)])
