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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pg8000.native
import pytest
import yaml

from energy_worker import config, db
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


def store(con: pg8000.native.Connection, meter: Meter) -> None:
    """The history as the processor stores it (DOMAIN.md): a run of pulses within the deadband
    keeps its first row and moves its second row to the latest pulse."""
    rows: list[list] = []
    reference: int | None = None
    second: int | None = None
    for counts, (t, watt) in enumerate(meter.pulses, start=1):
        row = [meter.no, watt, counts, Decimal(counts) / meter.ppk, t]
        in_band = (reference is None and watt is None and rows) or (
            reference is not None
            and watt is not None
            and abs(watt - reference) * 100 <= reference * meter.deviation_pct
        )
        if not in_band:
            rows.append(row)
            reference, second = watt, None
        elif second is None:
            rows.append(row)
            second = len(rows) - 1
        else:
            rows[second] = row
    for r in rows:
        con.run(
            "INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kwh, "
            "cor_time_stamp) VALUES (:m, :w, :c, :k, :t)",
            m=r[0],
            w=r[1],
            c=r[2],
            k=r[3],
            t=r[4],
        )


DST_DAY_START = datetime(2025, 3, 28, 23, 0, tzinfo=UTC)  # 2025-03-29 00:00 Copenhagen
DST_DAY_END = datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # 2025-04-01 00:00 Copenhagen


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
    last = m1.pulse_at_power(DST_DAY_START - timedelta(hours=1), DST_DAY_END, 1000)
    resume = now - timedelta(hours=2)
    m1.pulse_after_gap(last, resume)
    m1.pulse_at_power(resume, now - timedelta(hours=1), 2000)

    rng = random.Random(5)
    t = DST_DAY_START - timedelta(hours=1)
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
        owner.run(
            "INSERT INTO meter_metadata (meter_no, meter_name, pulse_per_kwh, max_energy, "
            "deviation_pct) VALUES (:n, :name, :p, :x, :d) ON CONFLICT (meter_no) DO UPDATE "
            "SET meter_name = :name, pulse_per_kwh = :p, max_energy = :x, deviation_pct = :d",
            n=m.no,
            name=m.name,
            p=m.ppk,
            x=m.max_w,
            d=m.deviation_pct,
        )
        store(owner, m)
        if m.pulses:
            owner.run(
                "INSERT INTO meter_status (meter_no, meter_counts, kwh, cor_time_stamp, "
                "pulses_counted, pulses_rejected) VALUES (:n, :c, :k, :t, :c, :r)",
                n=m.no,
                c=len(m.pulses),
                k=Decimal(len(m.pulses)) / m.ppk,
                t=m.pulses[-1][0],
                r=m.no - 1,
            )
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
    # Never pulsed: no bars. Pulsing only since today: none in 2025.
    assert {m for _, m, _ in res.rows} == {"House", "Heat pump", "Workshop"}
    assert {v for _, m, v in res.rows if m == "Workshop"} == {0}
    pump = history.meters[2]
    for t, m, v in res.rows:
        if m == "Heat pump":
            end = t + (timedelta(hours=23) if t == local(2025, 3, 30) else timedelta(days=1))
            exact = Decimal(pump.count_before(end) - pump.count_before(t)) / pump.ppk
            assert abs(v - exact) <= Decimal(1) / pump.ppk


def test_energy_per_hour_matches_the_pulses(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Energy per hour (kWh)", DST_DAY_START, DST_DAY_END)
    hours = sorted({t for t, _, _ in res.rows})
    assert len(hours) == 24 + 23 + 24
    assert all(h.minute == 0 and h.second == 0 for h in hours)
    pump = history.meters[2]
    total = Decimal(0)
    for t, m, v in res.rows:
        if m == "House":
            assert v == 1
        elif m == "Workshop":
            assert v == 0
        else:
            exact = Decimal(pump.count_before(t + timedelta(hours=1)) - pump.count_before(t))
            assert abs(v - exact / pump.ppk) <= Decimal(1) / pump.ppk, t
            total += v
    # Readings at the boundaries telescope: the sum is exact to one pulse at each end.
    exact_total = pump.count_before(DST_DAY_END) - pump.count_before(DST_DAY_START)
    assert abs(total - Decimal(exact_total) / pump.ppk) <= Decimal(2) / pump.ppk


def test_daily_totals_table(pg_module, reader, history):
    res = run_panel(pg_module, reader, "Daily totals", DST_DAY_START, DST_DAY_END)
    assert res.columns == ["Day", "Meter", "Energy (kWh)", "Reading at end of day (kWh)"]
    assert res.by("Day") == ["2025-03-31"] * 3 + ["2025-03-30"] * 3 + ["2025-03-29"] * 3
    assert res.by("Meter") == ["House", "Heat pump", "Workshop"] * 3
    house = [r for r in res.rows if r[1] == "House"]
    m1 = history.meters[1]
    first = m1.count_before(DST_DAY_START - timedelta(hours=1))  # nothing before the start
    assert first == 0
    assert [r[2] for r in house] == [24, 23, 24]
    # Readings: 1000 pulses per kWh, steady from one hour before the first day.
    assert [r[3] for r in house] == [Decimal(1 + 24 + 23 + 24), Decimal(1 + 24 + 23), 25]


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
    # as its first and last pulse.
    resume = history.now - timedelta(hours=2)
    assert stored == [(resume, pulses[-2001][1]), (pulses[-2000][0], 2000), (last_pulse, 2000)]
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
