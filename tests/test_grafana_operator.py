"""The operator's view in Grafana: meters' silence, the pipeline's lag, dead letters, the Google
Sheet push, the readings set by hand, the alert rules' queries, and one time zone for the
pusher, the reader role and the dashboards. The panels' SQL runs as Grafana runs it
(grafana_support.run_panel), on data of this module's own."""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import yaml

import devrun
import grafana_support as gs
from energy_worker.adapters.readonly_role import ensure_from_env
from energy_worker.core import totals
from energy_worker.programs.pusher import settings as pusher_settings
from grafana_support import REPO, Meter, add_meter, connect, run_alert_query, run_panel

# The shared fixtures, by name in this module, where pytest looks for them.
pg_module, owner, reader = gs.pg_module, gs.owner, gs.reader
HOUR = timedelta(hours=1)


@dataclass
class Operator:
    now: datetime
    meters: dict[int, Meter]
    typed_at: datetime


@pytest.fixture(scope="module")
def operator(owner) -> Operator:
    """Meters in every state of silence, dead letters, pushes sent, failing and waiting, and a
    processor behind with its work."""
    (now,) = owner.run("SELECT now()")[0]
    house = Meter(1, "House", 1000)  # 2000 W until an hour ago: suspiciously silent since
    house.pulse_at_power(now - timedelta(hours=2), now - timedelta(hours=1), 2000)
    fridge = Meter(2, "Fridge", 1000)  # 100 W, a pulse every 36 s: the last 2 minutes ago
    fridge.pulse_at_power(now - timedelta(hours=2), now - timedelta(minutes=2), 100)
    typed_at = now - timedelta(minutes=90, milliseconds=500)
    fridge.typed.append((typed_at, 279_970))  # 279.97 kWh typed in
    oven = Meter(3, "Oven", 1000)  # 3000 W until 10 minutes ago: silent, but not for long
    oven.pulse_at_power(now - timedelta(minutes=30), now - timedelta(minutes=10), 3000)
    garage = Meter(4, "Garage", 1000)  # never pulsed
    workshop = Meter(5, "Workshop", 1000)  # one pulse without a power reading
    workshop.pulses.append((now - timedelta(minutes=30), None))
    meters = {m.no: m for m in (house, fridge, oven, garage, workshop)}
    owner.run("DELETE FROM meter_status_stored")
    owner.run("DELETE FROM meter_metadata WHERE meter_no > 5")
    for m in meters.values():
        add_meter(owner, m)

    for key, reason, ago in [
        ("junk", "unknown key", timedelta(hours=3, minutes=10)),
        ("channel:9:timestamp", "meter 9 is not configured", timedelta(hours=3, minutes=5)),
        ("stop", "value is not 'true'", HOUR),
        ("old", "unknown key", timedelta(days=10)),
    ]:
        owner.run(
            "INSERT INTO dead_letters (at, key, value, reason) VALUES (:at, :k, 'x', :r)",
            at=now - ago,
            k=key,
            r=reason,
        )
    outbox = [  # key, recorded, attempts, status, error, sent
        ("day:2025-01-01", timedelta(hours=50), 1, 200, None, timedelta(hours=49)),
        ("day:2025-01-02", timedelta(hours=30), 5, 500, "HTTP 500", None),
        ("request:e:3", timedelta(hours=1), 0, None, None, None),
    ]
    for key, ago, attempts, status, error, sent in outbox:
        owner.run(
            "INSERT INTO push_outbox (dedup_key, reading_at, data_string, created_at, attempts,"
            " next_attempt_at, status_code, last_error, sent_at) VALUES (:k, :at, '1.00', :at,"
            " :n, :next, :s, :e, :sent)",
            k=key,
            at=now - ago,
            n=attempts,
            next=now + timedelta(minutes=10),
            s=status,
            e=error,
            sent=None if sent is None else now - sent,
        )
    owner.run(
        "UPDATE worker_progress SET backlog = 5000, updated_at = :t",
        t=now - timedelta(minutes=20),
    )
    return Operator(now, meters, typed_at)


def window(op: Operator) -> tuple[datetime, datetime]:
    return op.now - timedelta(days=1), op.now


def test_meters_silence(pg_module, reader, operator):
    res = run_panel(pg_module, reader, "Meters' silence", *window(operator))
    assert res.columns == [
        "Meter",
        "Last pulse",
        "Last power (W)",
        "Silent for",
        "Pulse expected every",
        "Silence (periods)",
        "Suspicious",
    ]
    rows = {r[0]: dict(zip(res.columns, r, strict=True)) for r in res.rows}
    assert list(rows) == ["House", "Fridge", "Oven", "Garage", "Workshop"]
    for name, watt, suspicious in [
        ("House", 2000, "yes"),  # an hour: 2000 periods of 1.8 s
        ("Fridge", 100, "no"),  # 2 minutes: 3 periods of 36 s
        ("Oven", 3000, "no"),  # 500 periods of 1.2 s, but only 10 minutes
    ]:
        row = rows[name]
        meter = next(m for m in operator.meters.values() if m.name == name)
        last = meter.pulses[-1][0]
        silent = (res.now - last).total_seconds()
        assert row["Last pulse"] == last and row["Last power (W)"] == watt
        assert math.isclose(row["Silent for"], silent, rel_tol=1e-6)
        assert row["Pulse expected every"] == pytest.approx(Decimal(3600) / watt)
        assert math.isclose(row["Silence (periods)"], silent * watt / 3600, rel_tol=1e-6)
        assert row["Suspicious"] == suspicious, name
    # No power known: no expectation, and no suspicion.
    for name in ("Garage", "Workshop"):
        row = rows[name]
        assert row["Pulse expected every"] is None and row["Silence (periods)"] is None
        assert row["Suspicious"] == "no"
    assert rows["Garage"]["Last pulse"] is None


def test_pipeline_lag(pg_module, owner, reader, operator):
    res = run_panel(pg_module, reader, "Pipeline lag", *window(operator))
    ((lag,),) = res.rows
    assert math.isclose(lag, (res.now - operator.now).total_seconds() + 20 * 60, rel_tol=1e-6)
    # Nothing waiting: an idle processor is no lag, however long ago it last committed.
    owner.run("UPDATE worker_progress SET backlog = 0")
    try:
        assert run_panel(pg_module, reader, "Pipeline lag", *window(operator)).rows == [[0]]
    finally:
        owner.run("UPDATE worker_progress SET backlog = 5000")


def test_processor_not_committing(pg_module, owner, reader, operator):
    """Work waits and the last commit is 20 minutes old: not committing. Nothing waiting, or a
    commit just now: committing."""
    res = run_panel(pg_module, reader, "Processor", *window(operator))
    ((state, waiting, age),) = res.rows
    assert (state, waiting) == ("not committing", 5000) and age > 15
    try:
        owner.run("UPDATE worker_progress SET backlog = 0")
        assert run_panel(pg_module, reader, "Processor", *window(operator)).rows[0][0] == (
            "committing"
        )
        owner.run("UPDATE worker_progress SET backlog = 3, updated_at = now() - interval '10 s'")
        assert run_panel(pg_module, reader, "Processor", *window(operator)).rows[0][0] == (
            "committing"
        )
    finally:
        owner.run(
            "UPDATE worker_progress SET backlog = 5000, updated_at = :at",
            at=operator.now - timedelta(minutes=20),
        )


def test_dead_letters(pg_module, reader, operator):
    now = operator.now
    res = run_panel(pg_module, reader, "Dead letters in range", *window(operator))
    assert res.rows == [[3]]  # the one of ten days ago is outside
    res = run_panel(pg_module, reader, "Dead letters per hour", *window(operator))
    assert res.columns == ["time", "Dead letters"]
    hours = Counter(
        (now - ago).astimezone(ZoneInfo(gs.TZ)).replace(minute=0, second=0, microsecond=0)
        for ago in (timedelta(hours=3, minutes=10), timedelta(hours=3, minutes=5), HOUR)
    )
    assert res.rows == [[t, n] for t, n in sorted(hours.items())]
    res = run_panel(pg_module, reader, "Latest dead letters", *window(operator))
    assert res.columns == ["Time", "Key", "Value", "Reason"]
    assert [(r[1], r[3]) for r in res.rows] == [
        ("stop", "value is not 'true'"),
        ("channel:9:timestamp", "meter 9 is not configured"),
        ("junk", "unknown key"),
    ]


def test_pushes(pg_module, reader, operator):
    now = operator.now
    res = run_panel(pg_module, reader, "Last push sent", *window(operator))
    ((age,),) = res.rows
    assert math.isclose(age, (res.now - now).total_seconds() + 49 * 3600, rel_tol=1e-6)
    res = run_panel(pg_module, reader, "Push status", *window(operator))
    assert res.columns == [
        "Waiting",
        "Failed attempts",
        "Failing for",
        "Last error",
        "Next attempt",
        "Last sent",
    ]
    ((waiting, failed, failing_for, error, next_at, sent),) = res.rows
    assert (waiting, failed, error) == (2, 5, "HTTP 500")
    assert math.isclose(failing_for, (res.now - now).total_seconds() + 30 * 3600, rel_tol=1e-6)
    assert next_at == now + timedelta(minutes=10) and sent == now - timedelta(hours=49)
    res = run_panel(pg_module, reader, "Google Sheet pushes", *window(operator))
    assert [(r[1], r[4], r[5], r[6], r[7] is not None) for r in res.rows] == [
        ("request:e:3", 0, None, None, False),
        ("day:2025-01-02", 5, 500, "HTTP 500", False),
        ("day:2025-01-01", 1, 200, None, True),
    ]


def test_readings_set_by_hand(pg_module, reader, operator):
    fridge = operator.meters[2]
    before = Decimal(fridge.count_before(operator.typed_at)) / 1000
    res = run_panel(pg_module, reader, "Readings set by hand", *window(operator))
    assert res.columns == ["time", "text", "tags"]
    change = Decimal("279.97") - before
    assert res.rows == [
        [operator.typed_at, f"Fridge: reading set to 279.97 kWh (+{change} kWh)", "Fridge"]
    ]
    res = run_panel(pg_module, reader, "Meter readings typed in", *window(operator))
    assert res.rows == [[operator.typed_at, "Fridge", Decimal("279.97"), before, change]]


def test_the_alert_rules_fire_on_what_the_panels_show(pg_module, reader, operator):
    silent = run_alert_query(pg_module, reader, "energy-worker-meter-silent")
    assert silent.columns == ["meter_no", "meter", "silent"]  # labels, then the one number
    assert sorted(silent.rows) == [
        ["1", "House", 1],
        ["2", "Fridge", 0],
        ["3", "Oven", 0],
        ["5", "Workshop", 0],  # never pulsed (Garage): no row, no alert
    ]
    backlog = run_alert_query(pg_module, reader, "energy-worker-backlog-growing")
    assert backlog.rows == [[5000]]
    failing = run_alert_query(pg_module, reader, "energy-worker-push-failing")
    ((seconds,),) = failing.rows
    assert seconds > 86400  # recorded 30 hours ago, failing since
    rules = gs.alert_rules()
    for uid, value, fires in [
        ("energy-worker-backlog-growing", 5000, True),
        ("energy-worker-backlog-growing", 42, False),
        ("energy-worker-push-failing", float(seconds), True),
        ("energy-worker-push-failing", 3600.0, False),
        ("energy-worker-meter-silent", 1, True),
        ("energy-worker-meter-silent", 0, False),
    ]:
        assert threshold_fires(rules[uid], value) is fires, (uid, value)


def threshold_fires(rule: dict, value: float) -> bool:
    """The rule's condition (a threshold expression on its query) applied to a value, as
    Grafana's expr/threshold.go does."""
    (expression,) = [q for q in rule["data"] if q["refId"] == rule["condition"]]
    (condition,) = expression["model"]["conditions"]
    evaluator = condition["evaluator"]
    (limit,) = evaluator["params"]
    return {"gt": value > limit, "lt": value < limit}[evaluator["type"]]


# --- one time zone ------------------------------------------------------------------------------


def compose_default(text: str, service: str, variable: str) -> str:
    """The value docker-compose.yaml gives a service's variable when .env does not set TZ."""
    value = yaml.safe_load(text)["services"][service]["environment"][variable]
    match = re.fullmatch(r"\$\{TZ:-([^}]+)\}", value)
    assert match, value
    return match[1]


def test_one_day_for_the_pusher_the_reader_and_the_dashboards(pg_module, owner):
    """With TZ unset, as in a fresh .env or `make run`: the pusher's days, the reader role's
    date_trunc('day') in SQL, and the day the dashboards declare all start at the same instant,
    on a day summer time starts (23 hours) and on one it ends (25)."""
    env: dict[str, str] = {}
    pusher_zone = pusher_settings.push_settings(env).tz
    assert devrun.program_env(env)["TZ"] == pusher_zone.key  # make run passes it on
    compose = (REPO / "docker-compose.yaml").read_text()
    assert compose_default(compose, "energy-worker", "TZ") == pusher_zone.key
    # The dashboards use Grafana's default zone, which the compose file sets to TZ's.
    dashboards = gs.dashboards().values()
    assert {d["timezone"] for d in dashboards} == {""}
    grafana_zone = ZoneInfo(compose_default(compose, "grafana", "GF_DATE_FORMATS_DEFAULT_TIMEZONE"))
    user = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    assert ensure_from_env(owner, {"GRAFANA_DB_USER": user, "GRAFANA_DB_PASSWORD": "pw"}) == user
    try:
        con = connect(pg_module, user)
        try:
            for day, hours in ((date(2025, 3, 30), 23), (date(2025, 10, 26), 25)):
                start, end = totals.day_bounds(day, pusher_zone)
                assert end - start == timedelta(hours=hours)
                noon = start + timedelta(hours=12)
                sql_start, sql_end = con.run(
                    "SELECT date_trunc('day', CAST(:t AS timestamptz)), "
                    "date_trunc('day', CAST(:t AS timestamptz)) + interval '1 day'",
                    t=noon,
                )[0]
                grafana_start = datetime.combine(day, datetime.min.time(), grafana_zone)
                assert sql_start == start == grafana_start, day
                assert sql_end == end, day
        finally:
            con.close()
    finally:
        owner.run(f'DROP OWNED BY "{user}"')
        owner.run(f'DROP ROLE "{user}"')
