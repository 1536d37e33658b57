"""Cron schedules with a timezone: the parser and the ``schedule:`` setting of a pipeline file.

A pipeline file says when it runs::

    schedule: "0 3 * * *"                                  # 03:00 UTC every day
    schedule: {cron: "0 3 * * *", timezone: Europe/Paris}  # 03:00 Paris time

The five fields are minute, hour, day of month, month and day of week, with ``*``,
lists (``1,15``), ranges (``1-5``), steps (``*/15``, ``10-50/20``), month and day names
(``jan``, ``mon-fri``), 7 as Sunday, and the shorthands ``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly``. As in Vixie cron, when both day of month and day
of week are restricted, a day matching either one matches.

Times are wall-clock times in the schedule's timezone. Daylight saving: a time that
does not exist that day (02:30 when clocks jump from 02:00 to 03:00) is skipped, and a
time that happens twice (clocks going back) runs once, at its first occurrence. A small
parser of our own keeps the dependency list short; it is the only cron dialect we need.

A pure module (no I/O, no threads), so the config can import it; what fires the runs is
scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names) per field; day of week accepts 7 as Sunday.
FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTH_NAMES),
    ("day of week", 0, 7, DAY_NAMES),
)
MAX_YEARS_AHEAD = 8  # covers "29 Feb on a Monday" style schedules (repeat every 28 years is not needed)


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message names the field and the value."""


def _parse_value(text: str, low: int, names: tuple[str, ...], what: str) -> int:
    lowered = text.lower()
    if names and lowered in names:
        return names.index(lowered) + (1 if names is MONTH_NAMES else 0)
    if not text.isdigit():
        raise CronError(f"{what}: `{text}` is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    return int(text)


def _parse_field(text: str, index: int) -> frozenset[int]:
    what, low, high, names = FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{what}: empty item in `{text}`")
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{what}: step `{step_text}` must be a positive number")
            step = int(step_text)
        if part == "*":
            start, end = low, high if index != 4 else 6
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _parse_value(a, low, names, what), _parse_value(b, low, names, what)
        else:
            start = _parse_value(part, low, names, what)
            end = high if step > 1 else start
        for value in (start, end):
            if not low <= value <= high:
                raise CronError(f"{what}: {value} is outside {low}-{high}")
        if end < start:
            raise CronError(f"{what}: range `{part}` goes backwards")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = " ".join(expression.split())
        text = SHORTHANDS.get(text.lower(), text)
        parts = text.split(" ")
        if len(parts) != 5:
            raise CronError(
                f"`{expression}` has {len(parts)} fields; a cron schedule has 5: "
                "minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\""
            )
        sets = [_parse_field(part, i) for i, part in enumerate(parts)]
        return cls(
            expression=expression,
            minutes=sets[0],
            hours=sets[1],
            days=sets[2],
            months=sets[3],
            weekdays=sets[4],
            day_restricted=not parts[2].startswith("*"),
            weekday_restricted=not parts[4].startswith("*"),
        )

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """The first run time strictly after ``after`` (aware), in UTC.

        UTC, not ``tz``: Python never finds a time inside a repeated DST hour equal to a
        time of another zone, which would make an exact comparison lie.
        """
        if after.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        local = after.astimezone(tz)
        day = local.date()
        last = day + timedelta(days=366 * MAX_YEARS_AHEAD)
        times = [(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]
        while day <= last:
            if self.matches_day(day):
                for hour, minute in times:
                    candidate = _wall_time(day, hour, minute, tz)
                    if candidate is not None and candidate > after:
                        return candidate.astimezone(UTC)
            day += timedelta(days=1)
        raise CronError(f"`{self.expression}` never runs (no matching day in {MAX_YEARS_AHEAD} years)")


def _wall_time(day: date, hour: int, minute: int, tz: tzinfo) -> datetime | None:
    """The wall-clock time in ``tz``, or None when it does not exist (DST gap)."""
    naive = datetime(day.year, day.month, day.day, hour, minute)
    aware = naive.replace(tzinfo=tz, fold=0)
    back = aware.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        return None  # in the gap: clocks jumped over this minute
    return aware


def timezone_of(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown timezone `{name}`; use an IANA name like Europe/Paris or UTC") from None


class ScheduleConfig(BaseModel):
    """`schedule:` in a pipeline file: a cron string, or `{cron: ..., timezone: ...}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str
    timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"cron": value}
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        Cron.parse(value)  # CronError is a ValueError: pydantic reports it on `cron`
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        timezone_of(value)
        return value

    def parsed(self) -> Cron:
        return Cron.parse(self.cron)

    def next_after(self, after: datetime) -> datetime:
        return self.parsed().next_after(after, timezone_of(self.timezone))

    def describe(self) -> str:
        return f"{self.cron} ({self.timezone})"
