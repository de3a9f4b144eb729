"""Fast JSON responses for hot read paths (orjson; the route's response_model still documents the shape)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def _default(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def json_response(payload: Any, status_code: int = 200) -> Response:
    body = orjson.dumps(payload, default=_default, option=JSON_OPTIONS)
    return Response(body, status_code=status_code, media_type="application/json")
