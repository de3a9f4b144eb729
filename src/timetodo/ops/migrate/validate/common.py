"""What every comparison of a validation shares: the `Comparison` protocol, JSON-able results, the report's file names."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

REPORT_TXT = "migration_validation_report.txt"
REPORT_JSON = "migration_validation_report.json"
MAX_NAMED = 20
"""At most this many keys / files / chunks are named one by one per kind of problem; the rest are counted."""
MAX_DETAILED_CHUNKS = 20
"""Per table, at most this many differing chunks are examined row by row to find the first/last differing key."""
LATENCY_FACTOR = 1.1
DEFAULT_SLACK_MS = 2.0


class Comparison(Protocol):
    @property
    def ok(self) -> bool: ...

    errors: list[str]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]: ...


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return str(value)


def fields_of(result: Any) -> dict[str, Any]:
    """`ok` and every field of a result dataclass (lists copied), for the JSON report."""
    return {"ok": result.ok} | {
        f.name: list(value) if isinstance(value := getattr(result, f.name), list) else value
        for f in dataclasses.fields(result)
    }


def more(count: int, what: str) -> str:
    return f"... and {count} more {what}"


class Verdict:
    """For a comparison dataclass with an `errors` field: `ok` when none was found, `to_dict()` of every field."""

    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return fields_of(self)
