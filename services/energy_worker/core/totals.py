"""Local-time boundaries of the totals and pushes, pure: no clock, no database.

Hours and days are local ones in the configured zone (TZ, default Europe/Copenhagen), and every
boundary is returned as an aware UTC instant, which is what the database compares with
consumption.cor_time_stamp. A local day is the time from one local midnight to the next, so the
day summer time starts has 23 hours and the day it ends has 25; an hour is one hour of real time
counted from the day's start (the last may be shorter in a zone whose offset changes by less than
an hour). A wall-clock time that does not exist (inside the spring-forward gap) is taken as the
instant the clocks show it after the jump: 02:30 on that day in Copenhagen means 03:30 CEST.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEFAULT_TZ = "Europe/Copenhagen"
DEFAULT_PUSH_TIME = time(0, 2)
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")


def zone(name: str | None) -> ZoneInfo:
    """The zone named by TZ (a leading ':' as in glibc's TZ=:Europe/Copenhagen is allowed)."""
    key = (name or "").strip().removeprefix(":") or DEFAULT_TZ
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"TZ {key!r} is not a known time zone") from None


def parse_clock(text: str | None) -> time:
    """A local time of day, HH:MM or HH:MM:SS; empty means the default 00:02."""
    if not text or not text.strip():
        return DEFAULT_PUSH_TIME
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a time of day as HH:MM")
    hour, minute, second = match.groups()
    return time(int(hour), int(minute), int(second or 0))


def resolve(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a naive local wall-clock time (see the module doc for gaps/folds).

    fold=0 takes the first of two instants in a fall-back fold, and in a gap applies the offset
    from before the jump, which lands where the wall clock shows that time after it.
    """
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def local_day(instant: datetime, tz: ZoneInfo) -> date:
    return instant.astimezone(tz).date()


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return resolve(datetime.combine(day, time()), tz)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return day_start(day, tz), day_start(day + DAY, tz)


def day_hours(day: date, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The hours of a local day as (start, end) UTC instants: 23, 24 or 25 of them."""
    start, end = day_bounds(day, tz)
    hours = []
    while start < end:
        hours.append((start, min(start + HOUR, end)))
        start += HOUR
    return hours


def hour_floor(instant: datetime, tz: ZoneInfo) -> datetime:
    """The start of the local hour that contains instant."""
    for start, end in day_hours(local_day(instant, tz), tz):
        if start <= instant < end:
            return start
    raise AssertionError("an instant lies in an hour of its own local day")


def closed_hours(
    since: datetime, now: datetime, tz: ZoneInfo
) -> Iterator[tuple[datetime, datetime]]:
    """Every hour that ended by now, from the one containing since, oldest first."""
    first = hour_floor(since, tz)
    day = local_day(first, tz)
    while day_start(day, tz) < now:
        for start, end in day_hours(day, tz):
            if start >= first and end <= now:
                yield start, end
        day += DAY


def closed_days(since: datetime, now: datetime, tz: ZoneInfo) -> Iterator[date]:
    """Every local day that ended by now, from the one containing since, oldest first."""
    day = local_day(since, tz)
    while day_start(day + DAY, tz) <= now:
        yield day
        day += DAY


def push_due_at(day: date, push_time: time, tz: ZoneInfo) -> datetime:
    """When the readings at the end of `day` are to be pushed: push_time on the next day."""
    return resolve(datetime.combine(day + DAY, push_time), tz)


def due_push_days(next_day: date, now: datetime, push_time: time, tz: ZoneInfo) -> list[date]:
    """The days from next_day on whose push is due by now, oldest first (more than one when
    the pusher was down or waited)."""
    days = []
    day = next_day
    while push_due_at(day, push_time, tz) <= now:
        days.append(day)
        day += DAY
    return days


def next_hour_end(now: datetime, tz: ZoneInfo) -> datetime:
    """The next local hour boundary after now."""
    for _start, end in day_hours(local_day(now, tz), tz):
        if end > now:
            return end
    raise AssertionError("a day's hours reach its end")
