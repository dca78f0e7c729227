"""Grafana's power panels: the power series per meter, which falls along the decaying
bound while a meter is quiet (also before a pulse without a power reading), the meter overview
(where a typed-in reading is no pulse) and the worker's stats. The panels' SQL runs as Grafana
runs it (grafana_support.run_panel)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import grafana_support as gs
from grafana_support import DST_DAY_END, DST_DAY_START, Meter, Result, add_meter, connect, run_panel

# The shared fixtures, by name in this module, where pytest looks for them.
pg_module, owner, reader, history = gs.pg_module, gs.owner, gs.reader, gs.history


def test_power_per_meter_falls_toward_zero_when_quiet(pg_module, reader, history):
    t_from, t_to = history.now - timedelta(hours=3), history.now
    res = run_panel(pg_module, reader, "Power per meter (W)", t_from, t_to)
    assert res.columns == ["time", "metric", "value"]
    series: dict[str, list[tuple[datetime, Any]]] = {}
    for t, m, v in res.rows:
        series.setdefault(m, []).append((t, v))
    assert set(series) == {"House", "Heat pump", "Workshop"}  # Garage never pulsed
    assert all(v >= 0 for s in series.values() for _, v in s)

    house = series["House"]
    assert house[0][1] == 1000 and house[0][0] < t_from  # the line enters from the left edge
    pulses = history.meters[1].pulses
    last_pulse = pulses[-1][0]
    stored = [(t, v) for t, v in house if t_from <= t <= last_pulse]
    # The pulse after the long gap carries the gap's mean power; then the 2 kW plateau, stored
    # as its first and last pulse and the last pulse before every quarter-hour boundary.
    resume = history.now - timedelta(hours=2)
    assert stored[:2] == [(resume, pulses[-2001][1]), (pulses[-2000][0], 2000)]
    assert stored[-1] == (last_pulse, 2000)
    assert 3 <= len(stored) - 2 <= 6 and {v for _, v in stored[1:]} == {2000}
    tail = [(t, v) for t, v in house if t > last_pulse]
    assert len(tail) >= 10
    assert [v for _, v in tail] == sorted((v for _, v in tail), reverse=True)
    assert tail[0][1] == 2000  # the bound meets the last reading one period after the pulse
    # It ends at the panel's "to" (Grafana's now), at the bound 3.6e9 / (t ms * pulses/kWh).
    end, watt = tail[-1]
    assert end == t_to
    ms = (end - last_pulse) / timedelta(milliseconds=1)
    assert math.isclose(watt, 3_600_000_000 / (ms * 1000), rel_tol=1e-3)
    for t, v in tail:  # every point is the bound (or the last reading, whichever is lower)
        ms = (t - last_pulse) / timedelta(milliseconds=1)
        assert math.isclose(v, min(2000, 3_600_000_000 / (ms * 1000)), rel_tol=1e-3, abs_tol=1e-3)

    # Quiet since 2025: tiny, and still falling. Rebooted meter: bounded from its maximum.
    assert all(v < Decimal("0.1") for _, v in series["Heat pump"][1:])
    workshop_end = series["Workshop"][-1]
    assert workshop_end[0] == t_to
    assert math.isclose(workshop_end[1], 3_600_000_000 / (10 * 60_000 * 1000), rel_tol=1e-3)


def test_power_of_a_past_range_ends_where_it_should(pg_module, reader, history):
    # A range in 2025: history only, the quiet tail belongs to the present.
    res = run_panel(pg_module, reader, "Power per meter (W)", DST_DAY_START, DST_DAY_END)
    assert all(t <= DST_DAY_END for t in res.by("time"))
    assert {v for t, m, v in res.rows if m == "House"} == {1000}


@dataclass
class Boiler:
    meter: Meter
    last_500: datetime  # the last pulse of a 500 W run
    reboot: datetime  # three hours later: a pulse without a power reading (reboot)
    last_pulse: datetime  # the last pulse of the 2000 W run after it
    typed_at: datetime  # then a meter reading typed in


@pytest.fixture
def boiler(owner, history):
    """A meter with a reboot after a quiet spell and a typed-in reading; removed afterwards."""
    m = Meter(9, "Boiler", 1000)
    # the last pulse two hours ago: never in the hour of the typed-in reading, whatever the time
    start = history.now - timedelta(hours=7, milliseconds=7)
    last_500 = m.pulse_at_power(start, start + timedelta(hours=1), 500)
    reboot = last_500 + timedelta(hours=3)
    m.pulses.append((reboot, None))
    last_pulse = m.pulse_at_power(reboot, reboot + timedelta(hours=1), 2000)
    typed_at = history.now - timedelta(minutes=5)
    m.typed.append((typed_at, 123_456))
    add_meter(owner, m)
    yield Boiler(m, last_500, reboot, last_pulse, typed_at)
    for table in ("meter_status_stored", "consumption", "meter_metadata"):
        owner.run(f"DELETE FROM {table} WHERE meter_no = 9")


def boiler_series(res: Result) -> list[tuple[datetime, Any]]:
    return [(t, v) for t, m, v in res.rows if m == "Boiler"]


def test_power_before_a_pulse_without_reading_follows_the_bound(pg_module, reader, boiler):
    """500 W until 12:00, a reboot pulse at 15:00 (no power reading), then 2000 W: the quiet
    hours in between draw as the bound from the 12:00 pulse, never as the 2000 W after them."""
    b = boiler
    res = run_panel(
        pg_module, reader, "Power per meter (W)", b.last_500 - timedelta(hours=1), b.last_pulse
    )
    series = boiler_series(res)
    assert (b.last_500, 500) in series
    gap = [(t, v) for t, v in series if b.last_500 < t <= b.reboot]
    assert len(gap) >= 10 and gap[-1][0] == b.reboot
    assert [v for _, v in gap] == sorted((v for _, v in gap), reverse=True)
    for t, v in gap:  # the bound from the 12:00 pulse, capped by its 500 W
        ms = (t - b.last_500) / timedelta(milliseconds=1)
        assert math.isclose(v, min(500, 3_600_000_000 / (ms * 1000)), rel_tol=1e-3, abs_tol=1e-3)
    # At the reboot pulse: one pulse in three hours.
    assert math.isclose(gap[-1][1], 1 / 3, rel_tol=1e-2)
    after = [v for t, v in series if t > b.reboot]
    assert after and set(after) == {2000}

    # A range that starts inside the gap enters at the bound, not at 500 W or 2000 W.
    t_from = b.last_500 + timedelta(hours=1)
    res = run_panel(
        pg_module, reader, "Power per meter (W)", t_from, b.reboot + timedelta(minutes=1)
    )
    series = boiler_series(res)
    assert series[0][0] < t_from and series[0][1] < 2
    assert all(v < 2 for t, v in series if t <= b.reboot)
    # And one that ends inside it ends at its right edge, at the bound.
    t_to = b.last_500 + timedelta(hours=2)
    res = run_panel(pg_module, reader, "Power per meter (W)", b.last_500, t_to)
    series = boiler_series(res)
    assert series[-1][0] == t_to
    assert math.isclose(series[-1][1], 0.5, rel_tol=1e-2)  # 1 pulse in 2 h at 1000 per kWh


def test_a_typed_in_reading_is_no_pulse(pg_module, reader, boiler, history):
    b = boiler
    res = run_panel(pg_module, reader, "Meters", history.now - timedelta(hours=1), history.now)
    row = dict(zip(res.columns, next(r for r in res.rows if r[0] == "Boiler"), strict=True))
    assert row["Last pulse"] == b.last_pulse
    assert row["Reading (kWh)"] == Decimal("123.456")
    age_ms = (res.now - b.last_pulse) / timedelta(milliseconds=1)
    assert math.isclose(row["Since last pulse"], age_ms / 1000, rel_tol=1e-6)
    # Two hours after 2000 W: about 0.5 W, not the bound from the meter's maximum at the
    # typing time (a few minutes ago: about 12 W).
    expected = min(2000, 3_600_000_000 / (age_ms * 1000))
    assert math.isclose(row["Power now (W)"], expected, rel_tol=1e-3, abs_tol=1e-3)

    # The graph's tail falls from the last pulse's 2000 W, through the typing time.
    res = run_panel(pg_module, reader, "Power per meter (W)", b.reboot, history.now)
    tail = [(t, v) for t, v in boiler_series(res) if t > b.last_pulse]
    assert tail[0][1] == 2000
    assert [v for _, v in tail] == sorted((v for _, v in tail), reverse=True)
    for t, v in tail:
        ms = (t - b.last_pulse) / timedelta(milliseconds=1)
        assert math.isclose(v, min(2000, 3_600_000_000 / (ms * 1000)), rel_tol=1e-3, abs_tol=1e-3)

    # The reading sets the meter in the hour it was typed in: no energy, a correction.
    con = connect(pg_module, reader)
    try:
        rows = con.run(
            "SELECT period_start, kwh_start, kwh_end, kwh, kwh_set "
            "FROM energy_per_period(:f, :t, 'hour') "
            "WHERE meter_no = 9 AND period_start <= :at AND period_end > :at",
            f=b.typed_at - timedelta(hours=1),
            t=history.now,
            at=b.typed_at,
        )
    finally:
        con.close()
    ((hour, kwh_start, kwh_end, kwh, kwh_set),) = rows
    assert kwh_end == Decimal("123.456")
    assert kwh_start == Decimal(b.meter.count_before(hour)) / 1000
    assert kwh == 0  # the boiler's last pulse was hours before
    assert kwh_set == kwh_end - kwh_start


def test_meter_overview(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Meters", history.now - timedelta(hours=1), history.now)
    assert res.columns == [
        "Meter",
        "Power now (W)",
        "Reading (kWh)",
        "Last pulse",
        "Since last pulse",
        "Pulses counted",
        "Readings above maximum",
    ]
    rows = {r[0]: dict(zip(res.columns, r, strict=True)) for r in res.rows}
    assert list(rows) == ["House", "Heat pump", "Garage", "Workshop"]
    for no, m in history.meters.items():
        row = rows[m.name]
        if not m.pulses:
            assert row["Power now (W)"] is None and row["Last pulse"] is None
            assert row["Pulses counted"] == 0
            continue
        last, _ = m.pulses[-1]
        assert row["Last pulse"] == last
        age_ms = (res.now - last) / timedelta(milliseconds=1)
        assert math.isclose(row["Since last pulse"], age_ms / 1000, rel_tol=1e-6)
        cap = m.pulses[-1][1] or m.max_w
        expected_w = min(cap, 3_600_000_000 / (age_ms * m.ppk))
        assert math.isclose(row["Power now (W)"], expected_w, rel_tol=1e-3, abs_tol=1e-3)
        assert row["Reading (kWh)"] == Decimal(len(m.pulses)) / m.ppk
        assert row["Pulses counted"] == len(m.pulses)
        assert row["Readings above maximum"] == no - 1
    assert math.isclose(rows["House"]["Power now (W)"], 1.0, rel_tol=1e-2)  # 1 h after 2 kW


def test_worker_stats(pg_module, reader, history):
    window = (history.now - timedelta(hours=1), history.now)
    res = run_panel(pg_module, reader, "Queue backlog", *window)
    assert res.rows == [[42]]
    res = run_panel(pg_module, reader, "Readings above the meter's maximum", *window)
    assert res.rows == [[0 + 1 + 3]]  # meters 1, 2 and 4 have status rows
    res = run_panel(pg_module, reader, "Last batch committed", *window)
    ((age,),) = res.rows
    assert math.isclose(age, (res.now - history.now).total_seconds() + 5, rel_tol=1e-6)
