"""Small validators shared by the schemas of several domains."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, Field


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    if name not in _zones() and name != "UTC":
        raise ValueError(f"'{name[:64]}' is not an IANA time zone name (like Europe/Moscow or UTC)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"'{name[:64]}' is not an IANA time zone name") from exc
    return name


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
