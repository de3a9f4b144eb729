"""The baseline: a bare Starlette endpoint serving the same 50-task JSON page as the API, served by the same
Uvicorn setup as `timetodo serve` (uvloop + httptools, the same number of workers, a listening socket per worker:
`python -m bench.bare_app PORT WORKERS`). `BARE_PAYLOAD` names a file holding the page (the
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


def serve(app: str, port: int, workers: int) -> None:
    """`app` ("module:attribute") under uvicorn as `timetodo serve` runs ours: uvloop, httptools, a socket per worker."""
    import uvicorn

    from timetodo.cli import reuseport

    config = uvicorn.Config(
        app, port=port, workers=workers, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    reuseport.ReusePortMultiprocess(config).run()


if __name__ == "__main__":
    import sys

    serve("bench.bare_app:app", int(sys.argv[1]), int(sys.argv[2]))
