"""What the Grafana tests share: Grafana's macro engine, a database with the real
schema filled with generated history, the read-only role, and the dashboards' panels run the
way Grafana runs them.

Every panel's SQL is expanded the way Grafana's PostgreSQL data source expands its macros, then
run as the read-only role against the real schema filled with generated history, and its rows
are checked against what the generated pulses say (test_grafana_energy.py,
test_grafana_power.py). The provisioning files are checked against the format Grafana reads
(test_grafana_provisioning.py), and the read-only role against writes (test_readonly_role.py).

The fixtures here are module-scoped: a test module imports them by name (pytest finds fixtures
in the module's namespace) and gets a database and a history of its own.
"""

from __future__ import annotations

import ast
import bisect
import io
import json
import random
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pg8000.native
import pytest
import yaml

from energy_worker.adapters import config, postgres
from energy_worker.adapters.readonly_role import ensure_readonly_role
from energy_worker.core import history as deadband
from energy_worker.core.domain import Run

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
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


# --- a database with the real schema ----------------------------------------------------


@pytest.fixture(scope="module")
def pg_module(pg_server, pg_template):
    """A database of the test module's own, cloned from the run's template (schema applied
    as energy_worker.adapters.schema.apply does), shared by its tests: the generated history is
    large."""
    name = f"{pg_template}_{uuid.uuid4().hex[:8]}"
    admin = postgres.connect(pg_server, "energy-worker tests")
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def connect(settings: config.PostgresSettings, user: str | None = None) -> pg8000.native.Connection:
    """As `user` (the read-only role) or the owner; trust auth on the test server."""
    if user is None:
        return postgres.connect(settings, "energy-worker tests")
    return pg8000.native.Connection(
        user=user,
        host=settings.host,
        port=settings.port,
        database=settings.database,
        ssl_context=False,  # plain text, as postgres.connect (no CA loading each time)
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
    _times: list[datetime] = field(default_factory=list, repr=False, compare=False)

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
        # pulses only grow (appended): their times are sorted again when their number changed
        if len(self._times) != len(self.pulses):
            self._times = sorted(p for p, _ in self.pulses)
        return (bisect.bisect_right if inclusive else bisect.bisect_left)(self._times, t)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def store_history(con: pg8000.native.Connection, meter: Meter) -> None:
    """The history as the processor stores it (energy_worker.core.ledger with history.place): a run
    of pulses within the deadband keeps its first row and a moving row that follows the latest
    pulse, but not across a quarter-hour boundary. A typed-in reading sets the count."""
    rows: list[list] = []
    run: Run | None = None
    counts = 0
    counted = 0  # pulses counted: a typed-in reading sets the count, not this
    events = [(t, w, None) for t, w in meter.pulses] + [(t, None, c) for t, c in meter.typed]
    for t, watt, typed_counts in sorted(events, key=lambda e: e[0]):
        counts = counts + 1 if typed_counts is None else typed_counts
        counted += typed_counts is None
        row = [meter.no, watt, counts, Decimal(counts) / meter.ppk, t, typed_counts is not None]
        row.append(counted)
        at_ms = (t - EPOCH) // timedelta(milliseconds=1)
        typed = typed_counts is not None
        where = deadband.place(run, watt, Decimal(meter.deviation_pct), at_ms, typed)
        if where is deadband.Place.MOVE and run and run.moving_row is not None:
            rows[run.moving_row] = row
            run = replace(run, latest_at_ms=at_ms)
            continue
        rows.append(row)
        if where is deadband.Place.NEW_MOVING and run is not None:
            run = replace(run, moving_row=len(rows) - 1, latest_at_ms=at_ms)
        else:
            run = Run(watt, len(rows) - 1, None, at_ms)
    # one COPY, not a round trip a row: the history has tens of thousands of rows
    copy = "".join(
        "\t".join(r"\N" if value is None else str(value) for value in row) + "\n" for row in rows
    )
    con.run(
        "COPY consumption (meter_no, watt_consumption, meter_counts, kwh, cor_time_stamp, "
        "typed_in, pulses) FROM STDIN",
        stream=io.StringIO(copy),
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
            "INSERT INTO meter_status_stored (meter_no, meter_counts, kwh, cor_time_stamp, "
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
    owner.run("DELETE FROM meter_status_stored")
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


def annotation_queries(dashboard: dict) -> list[dict]:
    """The dashboard's annotation queries (those with a query of their own)."""
    return [a for a in dashboard.get("annotations", {}).get("list", []) if a.get("target")]


def query(title: str) -> dict:
    """The query of the panel with this title, or of the annotation with this name (which
    several dashboards may show, with the same query)."""
    if any(p["title"] == title for d in dashboards().values() for p in panels(d)):
        (target,) = panel(title)["targets"]
        return target
    found = [
        a["target"]
        for d in dashboards().values()
        for a in annotation_queries(d)
        if a["name"] == title
    ]
    assert found and all(t == found[0] for t in found), title
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
    target = query(title)
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


def alert_rules() -> dict[str, dict]:
    """The provisioned alert rules, by uid (grafana/provisioning/alerting)."""
    rules: dict[str, dict] = {}
    for path in sorted((GRAFANA / "provisioning" / "alerting").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                assert rule["uid"] not in rules, rule["uid"]
                rules[rule["uid"]] = rule
    return rules


def run_alert_query(settings: config.PostgresSettings, role: str, uid: str) -> Result:
    """The data source query of an alert rule, run as Grafana runs it for the rule: a table."""
    (target,) = [q for q in alert_rules()[uid]["data"] if q["datasourceUid"] == DATASOURCE_UID]
    model = target["model"]
    assert model["format"] == "table" and model["rawQuery"], uid
    now = datetime.now(UTC)
    span = timedelta(seconds=target["relativeTimeRange"]["from"])
    sql = expand(model["rawSql"], now - span, now, timedelta(milliseconds=model["intervalMs"]))
    con = connect(settings, role)
    try:
        rows = con.run(sql)
        columns = [c["name"] for c in con.columns]
    finally:
        con.close()
    return Result(now, columns, rows)


def run_panel_titles() -> set[str]:
    """The titles of the panels (and names of the annotations) the tests run: the title of every
    run_panel call in the test modules, read from their source (so it does not matter which of
    them run, nor in which order). A title that is no literal string fails, so none is missed."""
    titles: set[str] = set()
    for path in sorted(TESTS.glob("test_*.py")):
        text = path.read_text()
        if run_panel.__name__ not in text:
            continue
        for node in ast.walk(ast.parse(text, filename=path.name)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name != run_panel.__name__:
                continue
            where = f"{path.name}:{node.lineno}"
            assert not any(isinstance(a, ast.Starred) for a in node.args[:3]), where
            given = node.args[2:3] + [k.value for k in node.keywords if k.arg == "title"]
            assert len(given) == 1, where
            (title,) = given
            assert isinstance(title, ast.Constant) and isinstance(title.value, str), where
            titles.add(title.value)
    return titles
