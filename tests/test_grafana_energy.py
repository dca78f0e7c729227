"""Grafana's energy panels: energy per hour and per day, over the summer-time change,
exactly what the generated pulses give and what the pusher stores for the same periods, and the
daily totals table. The panels' SQL runs as Grafana runs it (grafana_support.run_panel)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

import grafana_support as gs
from energy_worker.adapters.sql import totals as pusher_store
from energy_worker.core import totals
from grafana_support import DST_DAY_END, DST_DAY_START, TZ, Meter, connect, run_panel

# The shared fixtures, by name in this module, where pytest looks for them.
pg_module, owner, reader, history = gs.pg_module, gs.owner, gs.reader, gs.history


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


def kwh_between(m: Meter, start: datetime, end: datetime) -> Decimal:
    """The energy of the pulses in (start, end]: what the readings at those instants differ by."""
    return Decimal(m.count_before(end) - m.count_before(start)) / m.ppk


def test_energy_per_day_over_summer_time_change(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Energy per day (kWh)", DST_DAY_START, DST_DAY_END)
    assert res.columns == ["time", "metric", "value"]
    house = [(t, v) for t, m, v in res.rows if m == "House"]
    # 2025-03-30 has 23 hours in Copenhagen; a steady 1000 W meter shows it exactly.
    assert house == [
        (local(2025, 3, 29), Decimal(24)),
        (local(2025, 3, 30), Decimal(23)),
        (local(2025, 3, 31), Decimal(24)),
    ]
    # Never pulsed, or pulsing only since today: no bars in 2025.
    assert {m for _, m, _ in res.rows} == {"House", "Heat pump"}
    pump = history.meters[2]
    days = [t for t, m, _ in res.rows if m == "Heat pump"]
    assert days == [local(2025, 3, 29), local(2025, 3, 30), local(2025, 3, 31)]
    for t, m, v in res.rows:
        end = t + (timedelta(hours=23) if t == local(2025, 3, 30) else timedelta(days=1))
        assert v == kwh_between(history.meters[1 if m == "House" else 2], t, end), (m, t)
    assert sum(v for _, m, v in res.rows if m == "Heat pump") == kwh_between(
        pump, DST_DAY_START, DST_DAY_END
    )


def test_energy_per_hour_matches_the_pulses(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Energy per hour (kWh)", DST_DAY_START, DST_DAY_END)
    hours = sorted({t for t, _, _ in res.rows})
    assert len(hours) == 24 + 23 + 24
    assert all(h.minute == 0 and h.second == 0 for h in hours)
    assert {m for _, m, _ in res.rows} == {"House", "Heat pump"}
    for t, m, v in res.rows:
        meter = history.meters[1 if m == "House" else 2]
        # Exact: the deadband stores the last pulse before every quarter-hour boundary.
        assert v == kwh_between(meter, t, t + timedelta(hours=1)), (m, t)
        if m == "House":
            assert v == 1


def test_energy_equals_the_pushers_totals(pg_module, owner, reader, history):
    """Grafana's hours and days are what the pusher stores (and pushes) for them."""
    tz = ZoneInfo(TZ)
    days = [datetime(2025, 3, d).date() for d in (29, 30, 31)]
    hours = [(s, e, d) for d in days for s, e in totals.day_hours(d, tz)]
    pusher_store.upsert_hours(owner, hours, history.now)
    pusher_store.upsert_days(owner, [(d, *totals.day_bounds(d, tz)) for d in days], history.now)
    pushed_hours = {
        (s, no): (a, z, diff, kwh_set)
        for s, no, a, z, diff, kwh_set in owner.run(
            "SELECT hour_start, meter_no, kwh_start, kwh, kwh_diff, kwh_set "
            "FROM meter_hourly_totals WHERE day = ANY(:days) AND kwh_diff IS NOT NULL",
            days=days,
        )
    }
    pushed_days = {
        (s, no): (a, z, diff, kwh_set)
        for s, no, a, z, diff, kwh_set in owner.run(
            "SELECT day_start, meter_no, kwh_start, kwh, kwh_diff, kwh_set "
            "FROM meter_daily_totals WHERE day = ANY(:days) AND kwh_diff IS NOT NULL",
            days=days,
        )
    }
    assert len(pushed_hours) == 2 * (24 + 23 + 24) and len(pushed_days) == 2 * 3
    con = connect(pg_module, reader)
    try:
        for unit, pushed in (("hour", pushed_hours), ("day", pushed_days)):
            rows = con.run(
                "SELECT period_start, meter_no, kwh_start, kwh_end, kwh, kwh_set "
                "FROM energy_per_period(:f, :t, :u)",
                f=DST_DAY_START,
                t=DST_DAY_END,
                u=unit,
            )
            assert {(s, no): (a, z, d, c) for s, no, a, z, d, c in rows} == pushed, unit
    finally:
        con.close()


def test_daily_totals_table(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Daily totals", DST_DAY_START, DST_DAY_END)
    assert res.columns == [
        "Day",
        "Meter",
        "Energy (kWh)",
        "Set by hand (kWh)",
        "Reading at end of day (kWh)",
    ]
    assert res.by("Day") == ["2025-03-31"] * 2 + ["2025-03-30"] * 2 + ["2025-03-29"] * 2
    assert res.by("Meter") == ["House", "Heat pump"] * 3
    house = [r for r in res.rows if r[1] == "House"]
    m1 = history.meters[1]
    assert m1.count_before(DST_DAY_START - timedelta(hours=1)) == 0  # nothing before it
    assert [r[2] for r in house] == [24, 23, 24]
    assert [r[3] for r in res.rows] == [0] * 6  # nothing typed in
    # The reading at a day's end counts every pulse up to it: 1000 per kWh, steady from one
    # hour before the first day (its first pulse 3.6 s after the start: one pulse short).
    assert [r[4] for r in house] == [
        Decimal(m1.count_before(t)) / 1000
        for t in (DST_DAY_END, local(2025, 3, 31), local(2025, 3, 30))
    ]
    assert house[-1][4] == Decimal("24.999")


@pytest.fixture
def sauna(owner, history):
    """A meter whose reading is typed in twice on 2025-03-29, up and then down, between its
    pulses; removed afterwards, with its totals."""
    m = Meter(8, "Sauna", 1000)
    m.pulses.append((local(2025, 3, 29, 9) + timedelta(milliseconds=1), None))
    m.pulse_at_power(local(2025, 3, 29, 10), local(2025, 3, 29, 11), 3600)  # 3.6 kWh
    m.pulse_at_power(local(2025, 3, 29, 12), local(2025, 3, 29, 13), 1800)  # 1.8 kWh
    m.typed += [(local(2025, 3, 29, 10, 30), 279_970), (local(2025, 3, 29, 12, 30), 100_000)]
    gs.add_meter(owner, m)
    yield m
    for table in (
        "meter_hourly_totals",
        "meter_daily_totals",
        "meter_status_stored",
        "consumption",
    ):
        owner.run(f"DELETE FROM {table} WHERE meter_no = 8")
    owner.run("DELETE FROM meter_metadata WHERE meter_no = 8")


def test_a_typed_in_reading_is_no_energy_in_grafana_nor_in_the_totals(
    pg_module, owner, reader, sauna
):
    """The panels count the Sauna's pulses only; the readings it was set to are corrections
    (kwh_set), and Grafana's numbers are the pusher's, hour by hour and for the day."""
    day = datetime(2025, 3, 29).date()
    tz = ZoneInfo(TZ)
    start, end = totals.day_bounds(day, tz)
    res = run_panel(pg_module, reader, "Energy per hour (kWh)", start, end)
    hours = {t: v for t, m, v in res.rows if m == "Sauna"}
    assert hours == {
        local(2025, 3, 29, h): kwh_between(
            sauna, local(2025, 3, 29, h), local(2025, 3, 29, h) + timedelta(hours=1)
        )
        for h in range(10, 24)
    } | {local(2025, 3, 29, 9): 0}  # where its history begins: from its first reading
    assert hours[local(2025, 3, 29, 10)] == Decimal("3.6")  # not 279.97 kWh in an hour
    assert hours[local(2025, 3, 29, 12)] == Decimal("1.8")  # nor -181 kWh
    res = run_panel(pg_module, reader, "Energy per day (kWh)", start, end)
    assert [v for _, m, v in res.rows if m == "Sauna"] == [Decimal("5.4")]

    pusher_store.upsert_hours(owner, [(s, e, day) for s, e in totals.day_hours(day, tz)], end)
    pusher_store.upsert_days(owner, [(day, start, end)], end)
    con = connect(pg_module, reader)
    try:
        for unit, table, column in (
            ("hour", "meter_hourly_totals", "hour_start"),
            ("day", "meter_daily_totals", "day_start"),
        ):
            grafana = con.run(
                "SELECT period_start, kwh_start, kwh_end, kwh, kwh_set "
                "FROM energy_per_period(:f, :t, :u) WHERE meter_no = 8",
                f=start,
                t=end,
                u=unit,
            )
            pushed = owner.run(
                f"SELECT {column}, kwh_start, kwh, kwh_diff, kwh_set FROM {table} "
                "WHERE meter_no = 8 AND kwh_diff IS NOT NULL ORDER BY 1"
            )
            # Where the history begins the pusher has no reading to start from; Grafana
            # starts at the first reading (09:00, and the day).
            assert grafana[0][0] == (local(2025, 3, 29, 9) if unit == "hour" else start)
            assert grafana[1:] == pushed
            for _, kwh_start, kwh_end, kwh, kwh_set in grafana:
                assert kwh_start + kwh + kwh_set == kwh_end
            if unit == "hour":
                kwh_set_at = {r[0]: r[4] for r in grafana}
    finally:
        con.close()
    # The corrections: the jumps of the readings, up at 10:30 and down at 12:30.
    t1, t2 = local(2025, 3, 29, 10, 30), local(2025, 3, 29, 12, 30)
    before_first = Decimal(sauna.count_before(t1)) / 1000
    before_second = Decimal(279_970 + sauna.count_before(t2) - sauna.count_before(t1)) / 1000
    assert kwh_set_at[local(2025, 3, 29, 10)] == Decimal("279.97") - before_first
    assert kwh_set_at[local(2025, 3, 29, 12)] == Decimal("100") - before_second
    assert set(kwh_set_at.values()) - {0} == {kwh_set_at[local(2025, 3, 29, h)] for h in (10, 12)}
