"""Local-time boundaries, pure: DST days in Europe/Copenhagen, due and missed pushes."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energy_worker.core import totals

CPH = totals.zone("Europe/Copenhagen")
SPRING = date(2024, 3, 31)  # 02:00 CET -> 03:00 CEST: 23 hours
AUTUMN = date(2024, 10, 27)  # 03:00 CEST -> 02:00 CET: 25 hours


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def local_labels(day: date) -> list[str]:
    return [s.astimezone(CPH).strftime("%H%z") for s, _e in totals.day_hours(day, CPH)]


def test_an_ordinary_day_has_24_hours_from_local_midnight():
    hours = totals.day_hours(date(2024, 6, 1), CPH)
    assert len(hours) == 24
    assert hours[0] == (utc(2024, 5, 31, 22), utc(2024, 5, 31, 23))
    assert hours[-1][1] == utc(2024, 6, 1, 22)


def test_the_day_summer_time_starts_has_23_hours():
    assert totals.day_bounds(SPRING, CPH) == (utc(2024, 3, 30, 23), utc(2024, 3, 31, 22))
    labels = local_labels(SPRING)
    assert len(labels) == 23
    assert labels[:4] == ["00+0100", "01+0100", "03+0200", "04+0200"]


def test_the_day_summer_time_ends_has_25_hours():
    assert totals.day_bounds(AUTUMN, CPH) == (utc(2024, 10, 26, 22), utc(2024, 10, 27, 23))
    labels = local_labels(AUTUMN)
    assert len(labels) == 25
    assert labels[1:5] == ["01+0200", "02+0200", "02+0100", "03+0100"]


def test_hour_floor_tells_the_two_2_oclock_hours_apart():
    first = utc(2024, 10, 27, 0, 30)  # 02:30 CEST
    second = utc(2024, 10, 27, 1, 30)  # 02:30 CET
    assert totals.hour_floor(first, CPH) == utc(2024, 10, 27, 0)
    assert totals.hour_floor(second, CPH) == utc(2024, 10, 27, 1)


def test_closed_hours_and_days_across_a_dst_change():
    since = utc(2024, 10, 26, 21, 15)  # 23:15 CEST on the 26th
    now = utc(2024, 10, 27, 23, 0, 1)  # just after midnight ending the 27th
    hours = list(totals.closed_hours(since, now, CPH))
    assert hours[0] == (utc(2024, 10, 26, 21), utc(2024, 10, 26, 22))
    assert len(hours) == 1 + 25
    assert all(a[1] == b[0] for a, b in itertools.pairwise(hours))
    assert list(totals.closed_days(since, now, CPH)) == [date(2024, 10, 26), AUTUMN]
    # an hour still running is not closed
    assert list(totals.closed_hours(utc(2024, 6, 1, 10), utc(2024, 6, 1, 10, 59), CPH)) == []


def test_the_push_is_due_at_local_push_time_the_next_day():
    push = time(0, 2)
    assert totals.push_due_at(date(2024, 3, 30), push, CPH) == utc(2024, 3, 30, 23, 2)
    assert totals.push_due_at(SPRING, push, CPH) == utc(2024, 3, 31, 22, 2)
    assert totals.push_due_at(AUTUMN, push, CPH) == utc(2024, 10, 27, 23, 2)


def test_a_push_time_in_the_spring_gap_means_after_the_jump():
    assert totals.push_due_at(date(2024, 3, 30), time(2, 30), CPH) == utc(2024, 3, 31, 1, 30)
    # in the autumn fold, the first 02:30
    assert totals.push_due_at(date(2024, 10, 26), time(2, 30), CPH) == utc(2024, 10, 27, 0, 30)


def test_due_push_days_lists_missed_days_oldest_first():
    push = time(0, 2)
    start = date(2024, 6, 1)
    assert totals.due_push_days(start, utc(2024, 6, 1, 22, 1), push, CPH) == []
    assert totals.due_push_days(start, utc(2024, 6, 1, 22, 2), push, CPH) == [start]
    missed = totals.due_push_days(start, utc(2024, 6, 4, 12), push, CPH)
    assert missed == [date(2024, 6, 1), date(2024, 6, 2), date(2024, 6, 3)]


def test_next_hour_end():
    assert totals.next_hour_end(utc(2024, 6, 1, 10, 30), CPH) == utc(2024, 6, 1, 11)
    assert totals.next_hour_end(utc(2024, 6, 1, 11), CPH) == utc(2024, 6, 1, 12)
    # India is half an hour off UTC: its hours end at :30 UTC
    assert totals.next_hour_end(utc(2024, 6, 1, 10, 0), totals.zone("Asia/Kolkata")) == utc(
        2024, 6, 1, 10, 30
    )


def test_settings_parsing():
    assert totals.parse_clock(None) == time(0, 2)
    assert totals.parse_clock(" 6:05 ") == time(6, 5)
    assert totals.parse_clock("23:59:30") == time(23, 59, 30)
    for bad in ("24:00", "1", "12:60", "noon"):
        with pytest.raises(ValueError):
            totals.parse_clock(bad)
    assert totals.zone(None).key == "Europe/Copenhagen"
    assert totals.zone(":Europe/Copenhagen").key == "Europe/Copenhagen"
    with pytest.raises(ValueError):
        totals.zone("Mars/Olympus")


ZONES = ["Europe/Copenhagen", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2037, 12, 31)),
    st.sampled_from(ZONES),
)
def test_hours_tile_each_local_day_exactly(day, zone_name):
    tz = totals.zone(zone_name)
    start, end = totals.day_bounds(day, tz)
    hours = totals.day_hours(day, tz)
    assert hours[0][0] == start and hours[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(hours))
    assert sum((e - s for s, e in hours), timedelta()) == end - start
    assert 23 <= len(hours) <= 25
    assert start.astimezone(tz).date() == day
    for s, _e in hours:
        assert totals.local_day(s, tz) == day
        assert totals.hour_floor(s + timedelta(minutes=1), tz) == s
