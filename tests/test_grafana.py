"""Grafana out of the box (issue 5).

Every panel's SQL is expanded the way Grafana's PostgreSQL data source expands its macros, then
run as the read-only role against the real schema filled with generated history, and its rows
are checked against what the generated pulses say. The provisioning files are checked against
the format Grafana reads, and the read-only role against writes.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pg8000.native
import pytest
import yaml

from energy_worker import config, db, schema, store, totals
from energy_worker import history as deadband
from energy_worker.readonly_role import (
    RELATIONS,
    ensure_from_env,
    ensure_readonly_role,
    scram_verifier,
)

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "grafana"
DATASOURCE_UID = "energy-worker-pg"
TZ = "Europe/Copenhagen"


# --- Grafana's macro engine (pkg/tsdb/grafana-postgresql-datasource/macros.go and
# sqleng.Interpolate), as far as the dashboards can use it ---------------------------------


def go_rfc3339nano(t: datetime) -> str:
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_float(v: float) -> str:
    """Go's %v of a float64: shortest digits, exponent form below 1e-4 and from 1e6 on."""
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    digits = Decimal(repr(v))
    exp = digits.adjusted()
    if exp < -4 or exp >= 6:
        mantissa = repr(v / 10**exp).rstrip("0").rstrip(".")
        return f"{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    return repr(v)


def parse_interval(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if not m:
        raise ValueError(f"interval {text!r}")
    n, unit = int(m[1]), m[2]
    return {
        "ms": timedelta(milliseconds=n),
        "s": timedelta(seconds=n),
        "m": timedelta(minutes=n),
        "h": timedelta(hours=n),
        "d": timedelta(days=n),
        "w": timedelta(weeks=n),
    }[unit]


def format_interval(d: timedelta) -> str:
    for unit, size in (
        ("y", timedelta(days=365)),
        ("d", timedelta(days=1)),
        ("h", timedelta(hours=1)),
        ("m", timedelta(minutes=1)),
        ("s", timedelta(seconds=1)),
        ("ms", timedelta(milliseconds=1)),
    ):
        if d >= size:
            return f"{d // size}{unit}"
    return "1ms"


def expand(sql: str, t_from: datetime, t_to: datetime, interval: timedelta) -> str:
    # Global substitutions first, in Grafana's order, then the data source's macros.
    sql = sql.replace("$__interval_ms", str(interval // timedelta(milliseconds=1)))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(t_from.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(t_to.timestamp())))

    def macro(m: re.Match[str]) -> str:
        name, args = m[1], [a.strip(" ") for a in m[2].split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{go_rfc3339nano(t_from)}' AND '{go_rfc3339nano(t_to)}'"
        if name == "__timeFrom":
            return f"'{go_rfc3339nano(t_from)}'"
        if name == "__timeTo":
            return f"'{go_rfc3339nano(t_to)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            secs = go_float(parse_interval(args[1]).total_seconds())
            group = f"floor(extract(epoch from {args[0]})/{secs})*{secs}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            lo, hi = int(t_from.timestamp()), int(t_to.timestamp())
            return f"{args[0]} >= {lo} AND {args[0]} <= {hi}"
        raise ValueError(f"macro {name} is not supported here")

    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)", macro, sql)


def test_macro_expansion_matches_grafana():
    # Expected strings from Grafana's own macros_test.go.
    t0 = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=5)
    iv = timedelta(minutes=10)
    assert expand("select $__time(time_column)", t0, t1, iv) == 'select time_column AS "time"'
    assert (
        expand("WHERE $__timeFilter(time_column)", t0, t1, iv)
        == "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    )
    assert expand("select $__timeFrom()", t0, t1, iv) == "select '2018-04-12T18:00:00Z'"
    assert expand("select $__timeTo()", t0, t1, iv) == "select '2018-04-12T18:05:00Z'"
    assert (
        expand("SELECT $__timeGroup(time_column,'5m')", t0, t1, iv)
        == "SELECT floor(extract(epoch from time_column)/300)*300"
    )
    assert (
        expand("$__timeGroupAlias(time_column , '5m')", t0, t1, iv)
        == 'floor(extract(epoch from time_column)/300)*300 AS "time"'
    )
    assert expand("SELECT $__interval", t0, t1, iv) == "SELECT 10m"
    assert expand("$__interval_ms", t0, t1, iv) == "600000"
    half = datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC)
    assert go_rfc3339nano(half) == "1960-02-01T07:00:00.5Z"
    assert go_float(86400.0) == "86400" and go_float(1036800.0) == "1.0368e+06"


# --- a database with the real schema ----------------------------------------------------


@pytest.fixture(scope="module")
def pg_module(pg_server, pg_template):
    """A database of this module's own, cloned from the run's template (schema applied as
    energy_worker.schema.apply does), shared by its tests: the generated history is large."""
    name = f"{pg_template}_{uuid.uuid4().hex[:8]}"
    admin = db.connect(pg_server, "energy-worker tests")
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def connect(settings: config.PostgresSettings, user: str | None = None) -> pg8000.native.Connection:
    """As `user` (the read-only role) or the owner; trust auth on the test server."""
    if user is None:
        return db.connect(settings, "energy-worker tests")
    return pg8000.native.Connection(
        user=user, host=settings.host, port=settings.port, database=settings.database
    )


@pytest.fixture(scope="module")
def owner(pg_module):
    con = connect(pg_module)
    yield con
    con.close()


@pytest.fixture(scope="module")
def reader(owner):
    """The read-only role, as the set-up creates it; dropped again afterwards (roles are global)."""
    user = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    ensure_readonly_role(owner, user, "s3cret 'pw' $x", timezone=TZ)
    yield user
    owner.run(f'DROP OWNED BY "{user}"')
    owner.run(f'DROP ROLE "{user}"')


# --- generated history ------------------------------------------------------------------


@dataclass
class Meter:
    no: int
    name: str
    ppk: int
    max_w: int = 17250
    deviation_pct: int = 5
    pulses: list[tuple[datetime, int | None]] = field(default_factory=list)  # (time, watt)
    typed: list[tuple[datetime, int]] = field(default_factory=list)  # (time, counts) typed in

    def pulse_at_power(self, start: datetime, end: datetime, watt: int) -> datetime:
        """Pulses at constant power from start (exclusive) up to end; returns the last one."""
        period = timedelta(milliseconds=3_600_000_000 / (watt * self.ppk))
        t = start + period
        while t <= end:
            self.pulses.append((t, watt))
            t += period
        return t - period

    def pulse_after_gap(self, prev: datetime, t: datetime) -> None:
        ms = (t - prev) / timedelta(milliseconds=1)
        self.pulses.append((t, round(3_600_000_000 / (ms * self.ppk))))

    def count_before(self, t: datetime, inclusive: bool = True) -> int:
        return sum(1 for p, _ in self.pulses if (p <= t if inclusive else p < t))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def store_history(con: pg8000.native.Connection, meter: Meter) -> None:
    """The history as the processor stores it (energy_worker.ledger with history.place): a run
    of pulses within the deadband keeps its first row and moves its second row to the latest
    pulse, but not across a quarter-hour boundary. A typed-in reading sets the count."""
    rows: list[list] = []
    run: deadband.Run | None = None
    counts = 0
    events = [(t, w, None) for t, w in meter.pulses] + [(t, None, c) for t, c in meter.typed]
    for t, watt, typed_counts in sorted(events, key=lambda e: e[0]):
        counts = counts + 1 if typed_counts is None else typed_counts
        row = [meter.no, watt, counts, Decimal(counts) / meter.ppk, t, typed_counts is not None]
        at_ms = (t - EPOCH) // timedelta(milliseconds=1)
        where = deadband.place(run, watt, Decimal(meter.deviation_pct), at_ms)
        if where is deadband.Place.MOVE_SECOND and run and run.second_row is not None:
            rows[run.second_row] = row
            run = replace(run, latest_at_ms=at_ms)
            continue
        rows.append(row)
        if where is deadband.Place.SECOND and run is not None:
            run = replace(run, second_row=len(rows) - 1, latest_at_ms=at_ms)
        else:
            run = deadband.Run(watt, len(rows) - 1, None, at_ms)
    for r in rows:
        con.run(
            "INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kwh, "
            "cor_time_stamp, typed_in) VALUES (:m, :w, :c, :k, :t, :typed)",
            m=r[0],
            w=r[1],
            c=r[2],
            k=r[3],
            t=r[4],
            typed=r[5],
        )


def add_meter(con: pg8000.native.Connection, m: Meter, rejected: int = 0) -> None:
    """The meter, its history and its status row, as the processor leaves them."""
    con.run(
        "INSERT INTO meter_metadata (meter_no, meter_name, pulse_per_kwh, max_energy, "
        "deviation_pct) VALUES (:n, :name, :p, :x, :d) ON CONFLICT (meter_no) DO UPDATE "
        "SET meter_name = :name, pulse_per_kwh = :p, max_energy = :x, deviation_pct = :d",
        n=m.no,
        name=m.name,
        p=m.ppk,
        x=m.max_w,
        d=m.deviation_pct,
    )
    store_history(con, m)
    if m.pulses:
        ((counts, kwh, at),) = con.run(
            "SELECT meter_counts, kwh, cor_time_stamp FROM consumption WHERE meter_no = :n "
            "ORDER BY cor_time_stamp DESC, index DESC LIMIT 1",
            n=m.no,
        )
        con.run(
            "INSERT INTO meter_status (meter_no, meter_counts, kwh, cor_time_stamp, "
            "pulses_counted, pulses_rejected) VALUES (:n, :c, :k, :t, :p, :r)",
            n=m.no,
            c=counts,
            k=kwh,
            t=at,
            p=len(m.pulses),
            r=rejected,
        )


DST_DAY_START = datetime(2025, 3, 28, 23, 0, tzinfo=UTC)  # 2025-03-29 00:00 Copenhagen
DST_DAY_END = datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # 2025-04-01 00:00 Copenhagen
# The generated pulses start 1 ms after a whole hour, so that none falls exactly on a
# quarter-hour boundary (real pulses come at arbitrary milliseconds).
HISTORY_START = DST_DAY_START - timedelta(hours=1) + timedelta(milliseconds=1)


@dataclass
class History:
    now: datetime
    meters: dict[int, Meter]


@pytest.fixture(scope="module")
def history(owner) -> History:
    (now,) = owner.run("SELECT now()")[0]
    m1 = Meter(1, "House", 1000)  # steady 1000 W over the summer-time change, then quiet
    m2 = Meter(2, "Heat pump", 100)  # random plateaus and gaps, quiet since
    m3 = Meter(3, "Garage", 1000)  # never pulsed
    m4 = Meter(4, "Workshop", 1000)  # one pulse without power (after a reboot)
    last = m1.pulse_at_power(HISTORY_START, DST_DAY_END, 1000)
    resume = now - timedelta(hours=2)
    m1.pulse_after_gap(last, resume)
    m1.pulse_at_power(resume, now - timedelta(hours=1), 2000)

    rng = random.Random(5)
    t = HISTORY_START
    while t < DST_DAY_END:
        if rng.random() < 0.25:  # quiet for a while: the next pulse carries the gap's power
            nxt = t + timedelta(minutes=rng.randint(20, 300))
            m2.pulse_after_gap(t, nxt)
            t = nxt
        else:
            t = m2.pulse_at_power(
                t, t + timedelta(minutes=rng.randint(5, 180)), rng.choice([300, 1200, 2400, 4000])
            )
    m4.pulses.append((now - timedelta(minutes=10), None))

    meters = {m.no: m for m in (m1, m2, m3, m4)}
    # The template's default meters: ours replace them, and their status rows.
    owner.run("DELETE FROM meter_status")
    owner.run("DELETE FROM meter_metadata WHERE meter_no > 4")
    for m in meters.values():
        add_meter(owner, m, rejected=m.no - 1)
    owner.run(
        "UPDATE worker_progress SET backlog = 42, last_seq = 7, updated_at = :t",
        t=now - timedelta(seconds=5),
    )
    return History(now, meters)


# --- the dashboards ---------------------------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {
        p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def panel(title: str) -> dict:
    found = [p for d in dashboards().values() for p in panels(d) if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


@dataclass
class Result:
    now: datetime
    columns: list[str]
    rows: list[list]

    def by(self, column: str) -> list:
        i = self.columns.index(column)
        return [r[i] for r in self.rows]


def run_panel(
    settings: config.PostgresSettings, role: str, title: str, t_from: datetime, t_to: datetime
) -> Result:
    (target,) = panel(title)["targets"]
    sql = expand(target["rawSql"], t_from, t_to, timedelta(minutes=1))
    assert "$" not in sql, sql
    con = connect(settings, role)
    try:
        con.run("BEGIN")  # now() of the panel's query, for the expected values
        (now,) = con.run("SELECT now()")[0]
        rows = con.run(sql)
        columns = [c["name"] for c in con.columns]
        con.run("COMMIT")
    finally:
        con.close()
    if target["format"] == "time_series":
        # What Grafana's time_series format needs: a time column, sorted, metric + value.
        assert columns[0] == "time"
        times = [r[0] for r in rows]
        assert times == sorted(times)
    return Result(now, columns, rows)


def every_panel_title() -> set[str]:
    return {p["title"] for d in dashboards().values() for p in panels(d) if p.get("targets")}


TESTED_PANELS = {
    "Queue backlog",
    "Pulses rejected",
    "Last batch committed",
    "Meters",
    "Power per meter (W)",
    "Energy per hour (kWh)",
    "Energy per day (kWh)",
    "Daily totals",
}


def test_every_panel_is_tested():
    assert every_panel_title() == TESTED_PANELS


def local(y: int, mo: int, d: int, h: int = 0) -> datetime:
    return datetime(y, mo, d, h, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


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
    store.upsert_hours(owner, hours, history.now)
    store.upsert_days(owner, [(d, *totals.day_bounds(d, tz)) for d in days], history.now)
    pushed_hours = {
        (s, no): (a, z, diff)
        for s, no, a, z, diff in owner.run(
            "SELECT hour_start, meter_no, kwh_start, kwh, kwh_diff FROM meter_hourly_totals "
            "WHERE day = ANY(:days) AND kwh_diff IS NOT NULL",
            days=days,
        )
    }
    pushed_days = {
        (s, no): (a, z, diff)
        for s, no, a, z, diff in owner.run(
            "SELECT day_start, meter_no, kwh_start, kwh, kwh_diff FROM meter_daily_totals "
            "WHERE day = ANY(:days) AND kwh_diff IS NOT NULL",
            days=days,
        )
    }
    assert len(pushed_hours) == 2 * (24 + 23 + 24) and len(pushed_days) == 2 * 3
    con = connect(pg_module, reader)
    try:
        for unit, pushed in (("hour", pushed_hours), ("day", pushed_days)):
            rows = con.run(
                "SELECT period_start, meter_no, kwh_start, kwh_end, kwh "
                "FROM energy_per_period(:f, :t, :u)",
                f=DST_DAY_START,
                t=DST_DAY_END,
                u=unit,
            )
            assert {(s, no): (a, z, d) for s, no, a, z, d in rows} == pushed, unit
    finally:
        con.close()


def test_daily_totals_table(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Daily totals", DST_DAY_START, DST_DAY_END)
    assert res.columns == ["Day", "Meter", "Energy (kWh)", "Reading at end of day (kWh)"]
    assert res.by("Day") == ["2025-03-31"] * 2 + ["2025-03-30"] * 2 + ["2025-03-29"] * 2
    assert res.by("Meter") == ["House", "Heat pump"] * 3
    house = [r for r in res.rows if r[1] == "House"]
    m1 = history.meters[1]
    assert m1.count_before(DST_DAY_START - timedelta(hours=1)) == 0  # nothing before it
    assert [r[2] for r in house] == [24, 23, 24]
    # The reading at a day's end counts every pulse up to it: 1000 per kWh, steady from one
    # hour before the first day (its first pulse 3.6 s after the start: one pulse short).
    assert [r[3] for r in house] == [
        Decimal(m1.count_before(t)) / 1000
        for t in (DST_DAY_END, local(2025, 3, 31), local(2025, 3, 30))
    ]
    assert house[-1][3] == Decimal("24.999")


def test_power_per_meter_falls_toward_zero_when_quiet(pg_module, reader, history):
    t_from, t_to = history.now - timedelta(hours=3), history.now
    res = run_panel(pg_module, reader, "Power per meter (W)", t_from, t_to)
    assert res.columns == ["time", "metric", "value"]
    series: dict[str, list[tuple[datetime, Decimal]]] = {}
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
    start = history.now - timedelta(hours=6, milliseconds=7)
    last_500 = m.pulse_at_power(start, start + timedelta(hours=1), 500)
    reboot = last_500 + timedelta(hours=3)
    m.pulses.append((reboot, None))
    last_pulse = m.pulse_at_power(reboot, reboot + timedelta(hours=1), 2000)
    typed_at = history.now - timedelta(minutes=5)
    m.typed.append((typed_at, 123_456))
    add_meter(owner, m)
    yield Boiler(m, last_500, reboot, last_pulse, typed_at)
    for table in ("meter_status", "consumption", "meter_metadata"):
        owner.run(f"DELETE FROM {table} WHERE meter_no = 9")


def boiler_series(res: Result) -> list[tuple[datetime, Decimal]]:
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
    # About an hour after 2000 W: about 1 W, not the bound from the meter's maximum at the
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

    # The reading shows as energy in the hour it was typed in, exactly.
    con = connect(pg_module, reader)
    try:
        rows = con.run(
            "SELECT period_start, kwh_start, kwh_end FROM energy_per_period(:f, :t, 'hour') "
            "WHERE meter_no = 9 AND period_start <= :at AND period_end > :at",
            f=b.typed_at - timedelta(hours=1),
            t=history.now,
            at=b.typed_at,
        )
    finally:
        con.close()
    ((hour, kwh_start, kwh_end),) = rows
    assert kwh_end == Decimal("123.456")
    assert kwh_start == Decimal(b.meter.count_before(hour)) / 1000


def test_meter_overview(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Meters", history.now - timedelta(hours=1), history.now)
    assert res.columns == [
        "Meter",
        "Power now (W)",
        "Reading (kWh)",
        "Last pulse",
        "Since last pulse",
        "Pulses counted",
        "Pulses rejected",
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
        assert row["Pulses rejected"] == no - 1
    assert math.isclose(rows["House"]["Power now (W)"], 1.0, rel_tol=1e-2)  # 1 h after 2 kW


def test_worker_stats(pg_module, reader, history):
    window = (history.now - timedelta(hours=1), history.now)
    res = run_panel(pg_module, reader, "Queue backlog", *window)
    assert res.rows == [[42]]
    res = run_panel(pg_module, reader, "Pulses rejected", *window)
    assert res.rows == [[0 + 1 + 3]]  # meters 1, 2 and 4 have status rows
    res = run_panel(pg_module, reader, "Last batch committed", *window)
    ((age,),) = res.rows
    assert math.isclose(age, (res.now - history.now).total_seconds() + 5, rel_tol=1e-6)


# --- the read-only role -----------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO consumption (meter_no, meter_counts, kwh, cor_time_stamp) "
        "VALUES (1, 1, 1, now())",
        "UPDATE meter_status SET kwh = 0",
        "DELETE FROM consumption",
        "UPDATE worker_progress SET backlog = 0",
        "CREATE TABLE intruder (x int)",
        "CREATE VIEW intruder AS SELECT 1",
        "SELECT nextval('consumption_index_seq')",
        "SELECT * FROM schema_version",
        "TRUNCATE consumption",
        # What PostgreSQL grants every role: temporary tables, large objects (stored in the
        # database), advisory locks (the worker's own).
        "CREATE TEMP TABLE intruder (x int)",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT lo_create(0)",
        "SELECT lo_creat(-1)",
        "SELECT lo_import('/etc/hostname')",
        "SELECT lo_import('/etc/hostname', 0)",
        "SELECT lo_put(0, 0, 'x')",
        "SELECT lowrite(0, 'x')",
        "SELECT pg_advisory_lock(hashtext('energy-worker processor'))",
        "SELECT pg_try_advisory_lock(hashtext('energy-worker processor'))",
        "SELECT pg_advisory_xact_lock(hashtext('energy-worker schema'))",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT pg_advisory_lock_shared(1, 2)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "SELECT pg_advisory_xact_lock_shared(1)",
        "SELECT pg_try_advisory_xact_lock_shared(1, 2)",
    ],
)
def test_reader_cannot_write(pg_module, reader, history, statement):
    con = connect(pg_module, reader)
    try:
        # Even with the session made writable again: its grants alone refuse it.
        con.run("SET default_transaction_read_only = off")
        with pytest.raises(pg8000.native.DatabaseError) as err:
            con.run(statement)
        assert err.value.args[0]["C"] == "42501"  # insufficient_privilege
    finally:
        con.close()


def test_owner_keeps_what_public_lost(pg_module, owner, reader):
    """The processor and the schema set-up take advisory locks as the owner, by a grant of its
    own now that PUBLIC has none."""
    (me,) = owner.run("SELECT current_user")[0]
    rows = owner.run(
        "SELECT p.proname, (SELECT array_agg(coalesce(r.rolname, 'PUBLIC') ORDER BY 1) "
        "FROM aclexplode(p.proacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE a.privilege_type = 'EXECUTE') FROM pg_proc p "
        "WHERE p.pronamespace = 'pg_catalog'::regnamespace "
        "AND (p.proname LIKE 'lo\\_%' OR p.proname = 'lowrite' "
        "OR p.proname LIKE 'pg\\_%advisory\\_%lock%')"
    )
    closed = {
        "lo_create", "lo_creat", "lo_from_bytea", "lo_import", "lo_put", "lowrite",
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    }  # fmt: skip
    assert closed <= {name for name, _ in rows}
    for name, grantees in rows:
        if name in closed:
            assert me in grantees and "PUBLIC" not in grantees, name
        elif "unlock" in name:
            assert grantees is None or "PUBLIC" in grantees, name  # releasing stays open
    ((temp,),) = owner.run(
        "SELECT array_agg(coalesce(r.rolname, 'PUBLIC')) FROM pg_database d, "
        "aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE d.datname = current_database() AND a.privilege_type = 'TEMPORARY'"
    )
    assert me in temp and "PUBLIC" not in temp
    owner.run("CREATE TEMP TABLE owner_may (x int)")
    owner.run("DROP TABLE owner_may")
    assert owner.run("SELECT pg_try_advisory_lock(hashtext('energy-worker processor'))") == [[True]]
    owner.run("SELECT pg_advisory_unlock(hashtext('energy-worker processor'))")


def test_role_set_up_by_a_database_owner_who_is_no_superuser(pg_server, caplog):
    """Only a superuser may take pg_catalog's functions from PUBLIC: without, the set-up says
    what stays open, and still closes the temporary tables of the database it owns."""
    suffix = uuid.uuid4().hex[:8]
    boss, name, user = f"ew_owner_{suffix}", f"ew_test_owner_{suffix}", f"ew_reader_{suffix}"
    admin = connect(pg_server)
    admin.run(f"CREATE ROLE {boss} LOGIN CREATEROLE NOSUPERUSER")
    admin.run(f"CREATE DATABASE {name} OWNER {boss}")
    settings = config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    try:
        con = connect(settings, boss)
        try:
            schema.apply(con, {})
            with caplog.at_level("WARNING", logger="energy_worker.readonly_role"):
                ensure_readonly_role(con, user, "pw", timezone=TZ)
        finally:
            con.close()
        warned = [r.getMessage() for r in caplog.records]
        assert any("not a superuser" in m and "pg_advisory_lock," in m for m in warned)
        assert not any("temporary tables" in m for m in warned)
        con = connect(settings, user)
        try:
            con.run("SET default_transaction_read_only = off")
            with pytest.raises(pg8000.native.DatabaseError) as err:
                con.run("CREATE TEMP TABLE intruder (x int)")
            assert err.value.args[0]["C"] == "42501"
            con.run("SELECT count(*) FROM meter_overview")
        finally:
            con.close()
    finally:
        admin.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.run(f"DROP ROLE IF EXISTS {user}")
        admin.run(f"DROP ROLE IF EXISTS {boss}")
        admin.close()


def test_reader_sessions_are_read_only_and_local(pg_module, reader):
    con = connect(pg_module, reader)
    try:
        assert con.run("SHOW default_transaction_read_only") == [["on"]]
        assert con.run("SHOW TimeZone") == [[TZ]]
        for name in ("meter_overview", "worker_overview", "meter_last_pulse", "consumption"):
            con.run(f"SELECT * FROM {name} LIMIT 1")
    finally:
        con.close()


def test_role_setup_is_idempotent_and_takes_back_extra_grants(pg_module, owner, reader):
    owner.run(f'GRANT INSERT, DELETE ON consumption TO "{reader}"')
    ensure_readonly_role(owner, reader, "another pw", timezone=TZ)
    rows = owner.run(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = :r",
        r=reader,
    )
    assert {p for _, p in rows} == {"SELECT"}
    assert {t for t, _ in rows} == {r for r in RELATIONS if r in {t for t, _ in rows}}
    assert {"consumption", "meter_overview", "worker_overview"} <= {t for t, _ in rows}
    attrs = owner.run(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = :r",
        r=reader,
    )
    assert attrs == [[False, False, False, True]]


def test_role_from_the_environment(owner):
    assert ensure_from_env(owner, {"GRAFANA_DB_USER": "x"}) is None  # no password: no Grafana
    user = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    env = {"GRAFANA_DB_USER": user, "GRAFANA_DB_PASSWORD": "pw", "TZ": "Europe/Berlin"}
    try:
        assert ensure_from_env(owner, env) == user
        settings = owner.run(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_roles r "
            "ON r.oid = s.setrole WHERE r.rolname = :u",
            u=user,
        )
        assert ["TimeZone=Europe/Berlin"] in settings
        assert ["default_transaction_read_only=on"] in settings
    finally:
        owner.run(f'DROP OWNED BY "{user}"')
        owner.run(f'DROP ROLE "{user}"')


def test_role_refuses_the_owner_and_empty_passwords(owner):
    (me,) = owner.run("SELECT current_user")[0]
    with pytest.raises(ValueError):
        ensure_readonly_role(owner, me, "pw")
    with pytest.raises(ValueError):
        ensure_readonly_role(owner, "grafana_reader_x", "")


@pytest.mark.parametrize(
    "password", ["plain", "s p a c e s % $HOME # ; = ' \" \\", "ünïcødé\u00a0x"]
)
def test_scram_verifier_is_what_postgresql_stores(owner, password):
    """The server never sees the password; its stored verifier is what it would compute."""
    role = f"ew_scram_{uuid.uuid4().hex[:8]}"
    owner.run("SET password_encryption = 'scram-sha-256'")
    owner.run(f"CREATE ROLE {role} PASSWORD {pg8000.native.literal(password)}")
    try:
        (stored,) = owner.run("SELECT rolpassword FROM pg_authid WHERE rolname = :r", r=role)[0]
    finally:
        owner.run(f"DROP ROLE {role}")
    salt = base64.b64decode(stored.split("$")[1].split(":")[1])
    assert scram_verifier(password, salt) == stored
    assert password not in scram_verifier(password)


# --- provisioning files -----------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def compose_service() -> dict:
    return load_yaml(REPO / "docker-compose.yaml")["services"]["grafana"]


DATASOURCE_KEYS = {
    "name", "type", "access", "orgId", "uid", "url", "user", "database", "basicAuth",
    "basicAuthUser", "withCredentials", "isDefault", "jsonData", "secureJsonData", "version",
    "editable",
}  # fmt: skip


def test_datasource_provisioning():
    doc = load_yaml(GRAFANA / "provisioning" / "datasources" / "energy-worker.yaml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert set(ds) <= DATASOURCE_KEYS
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "grafana-postgresql-datasource"
    assert ds["access"] == "proxy"
    assert ds["jsonData"]["database"] == "${POSTGRES_DB}"
    assert ds["secureJsonData"] == {"password": "${GRAFANA_DB_PASSWORD}"}  # never a literal
    assert ds["user"] == "${GRAFANA_DB_USER}"
    # Every variable it uses is given to the container.
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", json.dumps(ds)))
    assert used <= set(compose_service()["environment"])


def test_dashboard_provider_points_at_the_mounted_dashboards():
    doc = load_yaml(GRAFANA / "provisioning" / "dashboards" / "energy-worker.yaml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert set(provider) <= {
        "name", "orgId", "folder", "folderUid", "type", "disableDeletion",
        "updateIntervalSeconds", "allowUiUpdates", "options",
    }  # fmt: skip
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2][::-1] for v in compose_service()["volumes"])
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = compose_service()["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()


def test_compose_service_is_pinned():
    # (tests/test_container_lint.py parses the whole compose file with the real compose parser)
    service = compose_service()
    assert re.fullmatch(r"grafana/grafana-oss:\d+\.\d+\.\d+", service["image"])
    assert set(service["depends_on"]) == {"postgres-db", "energy-worker"}


def test_dashboards_have_the_shape_grafana_reads():
    docs = dashboards()
    assert len({d["uid"] for d in docs.values()}) == len(docs)
    for name, d in docs.items():
        assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int), name
        assert "id" not in d or d["id"] is None  # provisioned: Grafana assigns ids
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for p in panels(d):
            g = p["gridPos"]
            assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine
            if p["type"] == "row":
                continue
            assert p["type"] in {"timeseries", "table", "stat", "barchart", "gauge"}
            assert p["datasource"] == {
                "type": "grafana-postgresql-datasource",
                "uid": DATASOURCE_UID,
            }
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == DATASOURCE_UID
                assert t["format"] in {"time_series", "table"}
                assert t["rawSql"].strip() and t["refId"]
                assert "--" not in t["rawSql"] and "/*" not in t["rawSql"]  # Grafana strips them
