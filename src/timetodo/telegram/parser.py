"""`/add` natural input in Russian and English → title, due, recurrence, project, priority. Pure: no I/O.

A small explicit grammar (no library parses RU+EN task phrases with recurrence and keeps the exact spans it used):
each recognised phrase is cut out of the text and the rest, whitespace collapsed, is the title — whatever is not
understood stays in the title, nothing is guessed. Recognised, in either language:

* `#project` (the first one) and `!1`..`!4` (priority; 1 is the highest);
* recurrence: every day / каждый день / ежедневно, every weekday / по будням, every monday[, friday] /
  каждый понедельник / по понедельникам, every N days|weeks|months / каждые N дней|недель|месяцев,
  every month [on the 1st] / каждый месяц [1-го числа], every year / ежегодно → the API's RRULE subset; the first due
  is the first occurrence from today;
* dates: today, tomorrow, the day after tomorrow; weekdays (`friday`, `в пятницу`: the next such day, today
  included; `next friday` / `в следующую пятницу`: strictly after today); `in 3 days|weeks|months` /
  `через 3 дня|недели|месяца` (months clamp to the month's end: Jan 31 + 1 month = Feb 28/29);
  `23.11[.2026]`, `2026-11-23`, `23 ноября`, `November 23`, `23 Nov` (a date without a year that has passed means
  next year); `end of month` / `в конце месяца`;
* times: `18:00`, `в 18:00`, `at 6pm`, `в 9`, `в 7 вечера`, `at noon`, `в полдень`; a time without a date means
  today, or tomorrow when that time has passed;
* `in 2 hours|30 minutes` / `через 2 часа|30 минут|час`: an instant, counted in absolute time and shown on the
  user's wall clock (so it is right across DST changes); dates with a time keep the wall-clock time the user typed.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from timetodo.tasks.recurrence import parse_rule

MAX_TITLE = 500
WEEKDAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")

_EN_DAYS = {
    "monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2, "thursday": 3, "thu": 3,
    "thurs": 3, "friday": 4, "fri": 4, "saturday": 5, "sat": 5, "sunday": 6, "sun": 6,
}  # fmt: skip
# every case form a weekday takes after "в/во", "каждый/каждую", "по ...ам", "следующий/следующую"
_RU_DAYS = {
    "понедельник": 0, "понедельникам": 0, "пн": 0, "вторник": 1, "вторникам": 1, "вт": 1,
    "среду": 2, "среда": 2, "средам": 2, "ср": 2, "четверг": 3, "четвергам": 3, "чт": 3,
    "пятницу": 4, "пятница": 4, "пятницам": 4, "пт": 4, "субботу": 5, "суббота": 5, "субботам": 5, "сб": 5,
    "воскресенье": 6, "воскресеньям": 6, "вс": 6,
}  # fmt: skip
_EN_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4, "may": 5,
    "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9, "sep": 9, "sept": 9,
    "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
_RU_MONTHS = {
    "января": 1, "янв": 1, "февраля": 2, "фев": 2, "марта": 3, "мар": 3, "апреля": 4, "апр": 4, "мая": 5,
    "июня": 6, "июн": 6, "июля": 7, "июл": 7, "августа": 8, "авг": 8, "сентября": 9, "сен": 9, "сент": 9,
    "октября": 10, "окт": 10, "ноября": 11, "нояб": 11, "ноя": 11, "декабря": 12, "дек": 12,
}  # fmt: skip
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "один": 1, "одну": 1, "два": 2, "две": 2, "три": 3}


@dataclass
class Parsed:
    """What `/add` understood. `due_time` None with a `due_date` = a date-only due."""

    title: str
    due_date: date | None = None
    due_time: time | None = None
    rule: str | None = None
    project: str | None = None
    priority: int | None = None
    understood: list[str] = field(default_factory=list)

    @property
    def due_datetime(self) -> datetime | None:
        if self.due_date is None or self.due_time is None:
            return None
        return datetime.combine(self.due_date, self.due_time)


def _days_alt(table: dict[str, int]) -> str:
    return "|".join(sorted(table, key=len, reverse=True))


_EN_DAY = _days_alt(_EN_DAYS)
_RU_DAY = _days_alt(_RU_DAYS)
_EN_MONTH = _days_alt(_EN_MONTHS)
_RU_MONTH = _days_alt(_RU_MONTHS)
_NUM = r"(\d{1,3}|a|an|one|two|three|один|одну|два|две|три)"
_B = r"(?<![\w#!])"  # a word start that is not part of a #tag or !priority
_E = r"(?!\w)"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(_B + "(?:" + pattern + ")" + _E, re.IGNORECASE)


def _num(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBERS[text.lower()]


def _add_months(day: date, months: int) -> date:
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _next_weekday(today: date, weekday: int, strictly_after: bool) -> date:
    ahead = (weekday - today.weekday()) % 7
    if ahead == 0 and strictly_after:
        ahead = 7
    return today + timedelta(days=ahead)


def _next_monthday(today: date, day: int) -> date:
    year, month = today.year, today.month
    for _ in range(13):
        if day <= calendar.monthrange(year, month)[1] and date(year, month, day) >= today:
            return date(year, month, day)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return today


def _valid_day(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _yearless(today: date, month: int, day: int) -> date | None:
    found = _valid_day(today.year, month, day)
    if found is not None and found < today:
        found = _valid_day(today.year + 1, month, day)
    if found is None and month == 2 and day == 29:  # 29 Feb: the next leap year
        year = today.year + 1
        while not calendar.isleap(year):
            year += 1
        found = date(year, 2, 29)
    return found


class _Cursor:
    """The text with recognised spans cut out as they are found."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.understood: list[str] = []

    def take(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        match = pattern.search(self.text)
        if match is None:
            return None
        self.understood.append(match.group(0).strip())
        self.text = self.text[: match.start()] + " " + self.text[match.end() :]
        return match


_PROJECT = re.compile(r"(?<!\S)#([^\s#!]{1,100})")
_PRIORITY = re.compile(r"(?<!\S)!([1-4])(?!\S)")

# recurrence
_EVERY_WEEKDAY = _rx(r"every\s+weekday|on\s+weekdays|weekdays|по\s+будням|каждый\s+будний\s+день|в\s+будни")
_EVERY_N = _rx(
    r"(?:every|каждые|каждый|каждую)\s+" + _NUM + r"\s+"
    r"(days?|weeks?|months?|years?|дн[яей]|день|недел[иью]|неделя|месяц[аев]*|год[аов]*|лет)"
)
_EVERY_DAYS_EN = _rx(r"every\s+((?:" + _EN_DAY + r")(?:\s*(?:,|and|&)\s*(?:" + _EN_DAY + r"))*)")
_EVERY_DAYS_RU = _rx(
    r"(?:каждый|каждую|каждое|по)\s+((?:" + _RU_DAY + r")(?:\s*(?:,|и)\s*(?:(?:в|во|по)\s+)?(?:" + _RU_DAY + r"))*)"
)
_MONTHDAY_EN = r"(?:\s+on\s+the\s+(\d{1,2})(?:st|nd|rd|th)?|\s+on\s+the\s+(last)\s+day)?"
_MONTHDAY_RU = r"(?:\s+(\d{1,2})(?:-?го)?(?:\s+числа)?|\s+(в\s+последний\s+день))?"
_EVERY_MONTH = _rx(r"(?:every\s+month|monthly)" + _MONTHDAY_EN + r"|(?:каждый\s+месяц|ежемесячно)" + _MONTHDAY_RU)
_EVERY_SIMPLE = _rx(r"every\s+day|каждый\s+день|every\s+week|каждую\s+неделю|every\s+year|каждый\s+год")
_EVERY_ADVERB = _rx(r"daily|ежедневно|weekly|еженедельно|yearly|annually|ежегодно")
# dates
_ISO_DATE = _rx(r"(?:on\s+)?(\d{4})-(\d{2})-(\d{2})")
_DOTTED = _rx(r"(?:on\s+)?(\d{1,2})[./](\d{1,2})(?:[./](\d{4}|\d{2}))?")
_DAY_MONTH = _rx(r"(?:on\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+(" + _EN_MONTH + "|" + _RU_MONTH + r")\.?(?:\s+(\d{4}))?")
_MONTH_DAY = _rx(r"(?:on\s+)?(" + _EN_MONTH + r")\.?\s+(\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(\d{4}))?")
_RELATIVE_DAY = _rx(
    r"the\s+day\s+after\s+tomorrow|day\s+after\s+tomorrow|послезавтра|today|tonight|сегодня|tomorrow|завтра"
)
_IN_UNITS = _rx(
    r"(?:in|через)\s+(?:" + _NUM + r"\s+)?"
    r"(minutes?|mins?|hours?|hrs?|days?|weeks?|months?|минут[уы]?|мин|час(?:а|ов)?|дн[яей]|день|недел[июь]|"
    r"месяц(?:а|ев)?)"
)
_END_OF_MONTH = _rx(r"(?:at\s+the\s+|by\s+the\s+)?end\s+of\s+(?:the\s+)?month|в\s+конце\s+месяца|к\s+концу\s+месяца")
_NEXT_WEEKDAY = _rx(r"next\s+(" + _EN_DAY + r")|в\s+следующ(?:ий|ую|ее)\s+(" + _RU_DAY + r")")
_WEEKDAY = _rx(r"(?:on\s+)?(" + _EN_DAY + r")|(?:в|во)\s+(" + _RU_DAY + r")")
_NEXT_WEEK = _rx(r"next\s+week|на\s+следующей\s+неделе")
# times
_TIME_WORDS = _rx(r"(?:at\s+)?(noon|midnight)|в\s+(полдень|полночь)")
_TIME_HM = _rx(r"(?:at\s+|в\s+|к\s+)?([01]?\d|2[0-3]):([0-5]\d)(?:\s*(am|pm))?")
_TIME_AMPM = _rx(r"(?:at\s+)?(1[0-2]|0?[1-9])\s*(am|pm)")
_TIME_AT = _rx(r"(?:at|в|к)\s+([01]?\d|2[0-3])(?:\s+(утра|дня|вечера|ночи|часов|часа|час))?(?![.:\d])")


def _unit_kind(unit: str) -> str:
    unit = unit.lower()
    for prefix, kind in (
        ("min", "minutes"),
        ("мин", "minutes"),
        ("h", "hours"),
        ("час", "hours"),
        ("d", "days"),
        ("дн", "days"),
        ("день", "days"),
        ("w", "weeks"),
        ("недел", "weeks"),
        ("mon", "months"),
        ("месяц", "months"),
        ("y", "years"),
        ("год", "years"),
        ("лет", "years"),
    ):
        if unit.startswith(prefix):
            return kind
    raise ValueError(unit)


def _weekday_of(name: str) -> int:
    name = name.lower()
    return _EN_DAYS[name] if name in _EN_DAYS else _RU_DAYS[name]


def _month_of(name: str) -> int:
    name = name.lower().rstrip(".")
    return _EN_MONTHS[name] if name in _EN_MONTHS else _RU_MONTHS[name]


def _recurrence(cur: _Cursor, today: date) -> tuple[str, date] | None:
    """Cut a recurrence phrase; returns (RRULE, first occurrence)."""
    if cur.take(_EVERY_WEEKDAY):
        first = today if today.weekday() < 5 else _next_weekday(today, 0, False)
        return "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", first
    match = cur.take(_EVERY_N)
    if match:
        count, kind = _num(match.group(1)), _unit_kind(match.group(2))
        if not 1 <= count <= 366:
            return None
        interval = "" if count == 1 else f";INTERVAL={count}"
        if kind == "days":
            return f"FREQ=DAILY{interval}", today
        if kind == "weeks":
            return f"FREQ=WEEKLY{interval};BYDAY={WEEKDAY_CODES[today.weekday()]}", today
        if kind == "months":
            return f"FREQ=MONTHLY{interval};BYMONTHDAY={today.day}", today
        return f"FREQ=YEARLY{interval}", today
    for pattern in (_EVERY_DAYS_EN, _EVERY_DAYS_RU):
        match = cur.take(pattern)
        if match:
            names = re.findall(_EN_DAY if pattern is _EVERY_DAYS_EN else _RU_DAY, match.group(1), re.IGNORECASE)
            days = sorted({_weekday_of(name) for name in names})
            first = min(_next_weekday(today, day, False) for day in days)
            return "FREQ=WEEKLY;BYDAY=" + ",".join(WEEKDAY_CODES[d] for d in days), first
    match = cur.take(_EVERY_MONTH)
    if match:
        day_text = match.group(1) or match.group(3)
        last = match.group(2) or match.group(4)
        if last:
            return "FREQ=MONTHLY;BYMONTHDAY=-1", today.replace(day=calendar.monthrange(today.year, today.month)[1])
        day = int(day_text) if day_text else today.day
        if not 1 <= day <= 31:
            return None
        return f"FREQ=MONTHLY;BYMONTHDAY={day}", _next_monthday(today, day)
    match = cur.take(_EVERY_SIMPLE) or cur.take(_EVERY_ADVERB)
    if match:
        word = match.group(0).lower()
        if any(key in word for key in ("day", "daily", "день", "ежедневно")):
            return "FREQ=DAILY", today
        if any(key in word for key in ("week", "недел")):
            return f"FREQ=WEEKLY;BYDAY={WEEKDAY_CODES[today.weekday()]}", today
        return "FREQ=YEARLY", today
    return None


def _date(cur: _Cursor, now: datetime) -> tuple[date | None, datetime | None]:
    """Cut one date phrase: (date, None) or, for `in 2 hours`, (None, the local wall-clock moment)."""
    today = now.date()
    match = cur.take(_IN_UNITS)
    if match:
        count = _num(match.group(1)) if match.group(1) else 1
        kind = _unit_kind(match.group(2))
        if kind in ("minutes", "hours"):
            delta = timedelta(minutes=count) if kind == "minutes" else timedelta(hours=count)
            zone = now.tzinfo
            moment = (now.astimezone(ZoneInfo("UTC")) + delta).astimezone(zone)
            return None, moment.replace(tzinfo=None, second=0, microsecond=0)
        if kind == "days":
            return today + timedelta(days=count), None
        if kind == "weeks":
            return today + timedelta(weeks=count), None
        return _add_months(today, count), None
    match = cur.take(_ISO_DATE)
    if match:
        return _valid_day(int(match.group(1)), int(match.group(2)), int(match.group(3))), None
    match = cur.take(_DAY_MONTH)
    if match:
        day, month = int(match.group(1)), _month_of(match.group(2))
        if match.group(3):
            return _valid_day(int(match.group(3)), month, day), None
        return _yearless(today, month, day), None
    match = cur.take(_MONTH_DAY)
    if match:
        month, day = _month_of(match.group(1)), int(match.group(2))
        if match.group(3):
            return _valid_day(int(match.group(3)), month, day), None
        return _yearless(today, month, day), None
    match = cur.take(_DOTTED)
    if match:
        day, month = int(match.group(1)), int(match.group(2))
        if match.group(3):
            year = int(match.group(3))
            return _valid_day(year + 2000 if year < 100 else year, month, day), None
        return _yearless(today, month, day), None
    match = cur.take(_RELATIVE_DAY)
    if match:
        word = match.group(0).lower()
        if "after" in word or "после" in word:
            return today + timedelta(days=2), None
        if word in ("tomorrow", "завтра"):
            return today + timedelta(days=1), None
        return today, None
    if cur.take(_END_OF_MONTH):
        return today.replace(day=calendar.monthrange(today.year, today.month)[1]), None
    match = cur.take(_NEXT_WEEKDAY)
    if match:
        return _next_weekday(today, _weekday_of(match.group(1) or match.group(2)), True), None
    if cur.take(_NEXT_WEEK):
        return _next_weekday(today, 0, True), None
    match = cur.take(_WEEKDAY)
    if match:
        return _next_weekday(today, _weekday_of(match.group(1) or match.group(2)), False), None
    return None, None


def _time(cur: _Cursor) -> time | None:
    match = cur.take(_TIME_WORDS)
    if match:
        word = (match.group(1) or match.group(2)).lower()
        return time(12, 0) if word in ("noon", "полдень") else time(0, 0)
    match = cur.take(_TIME_HM)
    if match:
        hour, minute, ampm = int(match.group(1)), int(match.group(2)), (match.group(3) or "").lower()
        if ampm == "pm" and hour < 12:
            hour += 12
        elif ampm == "am" and hour == 12:
            hour = 0
        return time(hour, minute)
    match = cur.take(_TIME_AMPM)
    if match:
        hour, ampm = int(match.group(1)) % 12, match.group(2).lower()
        return time(hour + (12 if ampm == "pm" else 0), 0)
    match = cur.take(_TIME_AT)
    if match:
        hour, part = int(match.group(1)), (match.group(2) or "").lower()
        if part in ("дня", "вечера") and hour < 12:
            hour += 12
        elif part == "ночи" and hour == 12:
            hour = 0
        return time(hour, 0)
    return None


def _clean_title(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:?])", r"\1", text)
    return text.strip(" ,;:-–—").strip()[:MAX_TITLE]


def parse(text: str, now: datetime) -> Parsed:
    """Parse `/add` input typed at `now` (an aware datetime in the user's time zone)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (the user's zone)")
    original = re.sub(r"\s+", " ", text).strip()
    cur = _Cursor(" " + original + " ")
    result = Parsed(title="")
    match = cur.take(_PROJECT)
    if match:
        result.project = match.group(1)[:100]
    match = cur.take(_PRIORITY)
    if match:
        result.priority = int(match.group(1))
    today = now.date()
    recurrence = _recurrence(cur, today)
    due_date, moment = _date(cur, now)
    due_time = _time(cur) if moment is None else None
    if moment is not None:
        due_date, due_time = moment.date(), moment.time()
    if recurrence is not None:
        result.rule = recurrence[0]
        if due_date is None:
            due_date = recurrence[1]
            local_now = now.replace(tzinfo=None, second=0, microsecond=0)
            if due_time is not None and datetime.combine(due_date, due_time) <= local_now:
                # today's occurrence has passed: the series starts at its next one
                series = parse_rule(result.rule).to_rrule(datetime.combine(due_date, due_time))
                nxt = series.after(local_now)
                due_date = nxt.date() if nxt is not None else due_date
    if due_time is not None and due_date is None:
        clock = now.replace(second=0, microsecond=0).time()
        due_date = today if due_time > clock else today + timedelta(days=1)
    result.due_date, result.due_time = due_date, due_time
    result.title = _clean_title(cur.text) or original[:MAX_TITLE]
    result.understood = cur.understood
    return result
