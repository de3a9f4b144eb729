"""Opaque cursors for keyset pagination: `?limit=1..200&cursor=` → `{results, next_cursor}`."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from timetodo.core.errors import ErrorCode, InvalidInput
from timetodo.core.validators import MAX_ID

T = TypeVar("T")

LIMIT_MAX = 200
CURSOR_MAX_LENGTH = 200
LimitQuery = Annotated[int, Query(ge=1, le=LIMIT_MAX, description="Page size, 1–200")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=CURSOR_MAX_LENGTH, description="`next_cursor` of the previous page; omit for the first page"),
]


class Page(BaseModel, Generic[T]):
    results: list[T]
    next_cursor: str | None


def encode_opaque(key: str, value: int) -> str:
    """A non-negative integer as an opaque URL-safe token (`{key: value}` in base64): cursors, sync tokens."""
    return base64.urlsafe_b64encode(orjson.dumps({key: value})).decode().rstrip("=")


def decode_opaque(token: str, key: str) -> int:
    """The integer `encode_opaque(key, …)` put in `token`; ValueError for anything else."""
    try:
        value = orjson.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))[key]
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError("not a token of this server") from exc
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ValueError("not a token of this server")
    return value


def encode_cursor(last_id: int) -> str:
    return encode_opaque("after", last_id)


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        return decode_opaque(cursor, "after")
    except ValueError as exc:
        raise InvalidInput(
            "The cursor is not valid: pass back next_cursor from the previous page unchanged",
            code=ErrorCode.invalid_cursor,
        ) from exc


def next_cursor(rows: list[T], limit: int, id_of: str = "id") -> tuple[list[T], str | None]:
    """Rows were fetched with limit + 1: trim the extra one and say where the next page starts."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(int(getattr(rows[-1], id_of)))
