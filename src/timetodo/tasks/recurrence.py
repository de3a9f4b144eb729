"""The RRULE subset of Time to DO and the next occurrence of a recurring task (python-dateutil).

Supported: FREQ=DAILY|WEEKLY|MONTHLY|YEARLY, INTERVAL=1..366, BYDAY=MO,TU,… (WEEKLY only), BYMONTHDAY=1..31 or
-31..-1 (MONTHLY only), and one of UNTIL=YYYYMMDD[THHMMSS[Z]] or COUNT=1..1000. Occurrences are computed on
wall-clock time in the task's zone, so 18:00 stays 18:00 across DST changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Literal

from dateutil import rrule

FREQS = {"DAILY": rrule.DAILY, "WEEKLY": rrule.WEEKLY, "MONTHLY": rrule.MONTHLY, "YEARLY": rrule.YEARLY}
WEEKDAYS = {
    "MO": rrule.MO,
    "TU": rrule.TU,
    "WE": rrule.WE,
    "TH": rrule.TH,
    "FR": rrule.FR,
    "SA": rrule.SA,
    "SU": rrule.SU,
}
Mode = Literal["from_due", "from_completion"]
_UNTIL = re.compile(r"^(\d{8})(?:T(\d{6})Z?)?$")


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    freq: str
    interval: int = 1
    byday: tuple[str, ...] = ()
    bymonthday: tuple[int, ...] = ()
    until: datetime | None = None
    count: int | None = None

    def to_rrule(self, dtstart: datetime) -> rrule.rrule:
        kwargs: dict[str, Any] = {"dtstart": dtstart, "interval": self.interval}
        if self.byday:
            kwargs["byweekday"] = [WEEKDAYS[d] for d in self.byday]
        if self.bymonthday:
            kwargs["bymonthday"] = list(self.bymonthday)
        if self.until is not None:
            kwargs["until"] = self.until
        if self.count is not None:
            kwargs["count"] = self.count
        return rrule.rrule(FREQS[self.freq], **kwargs)  # type: ignore[arg-type]


def parse_rule(text: str) -> Rule:
    """Validate `text` against the supported subset; RuleError says exactly what is wrong."""
    text = text.strip().removeprefix("RRULE:")
    if not text:
        raise RuleError("the rule is empty")
    parts: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        key = key.strip().upper()
        if not sep or not value:
            raise RuleError(f"'{item[:40]}' is not KEY=VALUE")
        if key in parts:
            raise RuleError(f"{key} is given twice")
        parts[key] = value.strip().upper()
    unknown = set(parts) - {"FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "UNTIL", "COUNT"}
    if unknown:
        raise RuleError(f"unsupported part(s): {', '.join(sorted(unknown))}")
    freq = parts.get("FREQ")
    if freq not in FREQS:
        raise RuleError("FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY")
    interval = 1
    if "INTERVAL" in parts:
        if not parts["INTERVAL"].isdigit() or not 1 <= int(parts["INTERVAL"]) <= 366:
            raise RuleError("INTERVAL must be a whole number from 1 to 366")
        interval = int(parts["INTERVAL"])
    byday: tuple[str, ...] = ()
    if "BYDAY" in parts:
        if freq != "WEEKLY":
            raise RuleError("BYDAY is supported with FREQ=WEEKLY only")
        byday = tuple(parts["BYDAY"].split(","))
        bad = [d for d in byday if d not in WEEKDAYS]
        if bad:
            raise RuleError(f"BYDAY values must be MO,TU,WE,TH,FR,SA,SU (got {', '.join(bad)})")
    bymonthday: tuple[int, ...] = ()
    if "BYMONTHDAY" in parts:
        if freq != "MONTHLY":
            raise RuleError("BYMONTHDAY is supported with FREQ=MONTHLY only")
        try:
            bymonthday = tuple(int(v) for v in parts["BYMONTHDAY"].split(","))
        except ValueError as exc:
            raise RuleError("BYMONTHDAY values must be numbers") from exc
        if any(v == 0 or not -31 <= v <= 31 for v in bymonthday):
            raise RuleError("BYMONTHDAY values must be 1..31 or -31..-1")
    if "UNTIL" in parts and "COUNT" in parts:
        raise RuleError("give UNTIL or COUNT, not both")
    until = None
    if "UNTIL" in parts:
        match = _UNTIL.match(parts["UNTIL"])
        if not match:
            raise RuleError("UNTIL must look like 20261231 or 20261231T235959Z")
        try:
            until = datetime.strptime(match.group(1) + (match.group(2) or "235959"), "%Y%m%d%H%M%S")
        except ValueError as exc:
            raise RuleError("UNTIL is not a real date") from exc
    count = None
    if "COUNT" in parts:
        if not parts["COUNT"].isdigit() or not 1 <= int(parts["COUNT"]) <= 1000:
            raise RuleError("COUNT must be a whole number from 1 to 1000")
        count = int(parts["COUNT"])
    return Rule(freq, interval, byday, bymonthday, until, count)


def next_occurrence(
    rule: Rule, anchor: datetime, current: datetime, completed_local: datetime, mode: Mode
) -> datetime | None:
    """The next due (wall clock) after completing the occurrence at `current`, or None when the series ended.

    from_due: the first occurrence of the series (started at `anchor`) after `current`.
    from_completion: the series restarts on the completion day, at the due's time of day.
    """
    if mode == "from_due":
        return rule.to_rrule(anchor).after(current)
    start = datetime.combine(completed_local.date(), current.time())
    series = rule.to_rrule(start)
    return series.after(start)


def as_datetime(value: date | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.combine(value, time(0))
