"""Small validators shared by the schemas of several domains."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, Field, WithJsonSchema

# Files in the zoneinfo folder that are not IANA zone names: `localtime` is the host's own zone (it may differ or be
# missing on another host, e.g. after a migration), `posixrules`/`Factory` are tzdata internals.
_NOT_IANA = frozenset({"localtime", "posixrules", "Factory"})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(
        name for name in available_timezones() if name not in _NOT_IANA and not name.startswith(("posix/", "right/"))
    )


def check_timezone(name: str) -> str:
    if name not in _zones() and name != "UTC":
        raise ValueError(f"'{name[:64]}' is not an IANA time zone name (like Europe/Moscow or UTC)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"'{name[:64]}' is not an IANA time zone name") from exc
    return name


TimeZoneName = Annotated[
    str,
    AfterValidator(check_timezone),
    # the OpenAPI schema lists the accepted names, so clients and the API fuzzer see the real constraint
    WithJsonSchema({"type": "string", "enum": sorted(_zones() | {"UTC"}), "description": "An IANA time zone name"}),
]
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]

# Dates and instants the API accepts: far enough from the ends of Python's and the databases' calendars that
# converting between time zones or adding a year never overflows (year 1 or 9999 used to end in a 500).
MIN_YEAR = 1900
MAX_YEAR = 2999
_RANGE_MESSAGE = f"must be between {MIN_YEAR}-01-01 and {MAX_YEAR}-12-31"


def check_date(value: dt.date) -> dt.date:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(_RANGE_MESSAGE)
    return value


def check_wall_clock(value: dt.datetime) -> dt.datetime:
    """A datetime with or without an offset, within the accepted years."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(_RANGE_MESSAGE)
    return value


def check_instant(value: dt.datetime) -> dt.datetime:
    """An instant: an offset is required; returned in UTC."""
    if value.tzinfo is None:
        raise ValueError("give a time zone offset, e.g. 2026-11-23T09:00:00+03:00 or ...Z")
    check_wall_clock(value)
    return value.astimezone(dt.UTC)


# (a year range is not expressed as a pattern in the schema: with `format` it leaves generators nothing to try)
SafeDate = Annotated[dt.date, AfterValidator(check_date), Field(description="A date, years 1900–2999")]
WallClock = Annotated[
    dt.datetime, AfterValidator(check_wall_clock), Field(description="A date and time, years 1900–2999")
]
Instant = Annotated[
    dt.datetime,
    AfterValidator(check_instant),
    Field(description="An instant with a UTC offset (…Z or …+03:00), years 1900–2999"),
]


def check_no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value
