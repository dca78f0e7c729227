"""`energy-worker energy` against a real PostgreSQL: kWh per meter per day and per hour, exact,
counted by pulses (typed-in readings excluded), with bars, JSON and CSV; and status's kWh today
and honest power (the bound now apart from the last measured power)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pg8000.native
import pytest
from redis import Redis

from cli_support import cli
from energy_worker.adapters import config
from energy_worker.cli import show
from energy_worker.cli.energy import FIRST_PULSE_NOTE, hour_periods
from energy_worker.core import totals
from helpers import REPO

METERS = str(REPO / "services" / "energy_worker" / "meters.toml")
CPH = totals.zone("Europe/Copenhagen")


def row(
    sql: pg8000.native.Connection,
    meter: int,
    at: datetime,
    pulses: int,
    kwh: str,
    watt: int | None = None,
    typed: bool = False,
) -> None:
    """A history row as the processor writes it (1000 pulses per kWh), and the meter's state."""
    sql.run(
        """INSERT INTO consumption (meter_no, meter_counts, kWh, cor_time_stamp, typed_in, pulses,
                                    watt_consumption)
           VALUES (:m, :c, :k, :t, :typed, :p, :w)""",
        m=meter,
        c=int(Decimal(kwh) * 1000),
        k=Decimal(kwh),
        t=at,
        typed=typed,
        p=pulses,
        w=watt,
    )
    sql.run(
        """UPDATE meter_status_stored SET kWh = :k, meter_counts = :c, pulses_counted = :p
           WHERE meter_no = :m""",
        m=meter,
        k=Decimal(kwh),
        c=int(Decimal(kwh) * 1000),
        p=pulses,
    )


@pytest.fixture
def env(postgres_ini: Path) -> dict[str, str]:
    return {"POSTGRES_INI": str(postgres_ini), "METERS_CONFIG": METERS, "TZ": CPH.key}


@pytest.fixture
def today() -> date:
    return totals.local_day(datetime.now(UTC), CPH)


@pytest.fixture
def history(sql: pg8000.native.Connection, today: date) -> dict[str, datetime]:
    """Meter 1's history begins yesterday at 10:00:30 with a pulse; 1000 pulses (1 kWh) follow
    by 11:00; just after midnight 2000 more, a reading of 500 kWh typed in, and 500 more.
    Meter 2 has no history."""
    yesterday = totals.day_start(today - totals.DAY, CPH)
    midnight = totals.day_start(today, CPH)
    first = yesterday + timedelta(hours=10, seconds=30)
    row(sql, 1, first, 1, "0.001", None)  # the first pulse: no power
    row(sql, 1, yesterday + timedelta(hours=11), 1001, "1.001", 900)
    row(sql, 1, midnight + timedelta(seconds=1), 3001, "3.001", 1200)
    row(sql, 1, midnight + timedelta(seconds=2), 3001, "500.000", None, typed=True)
    row(sql, 1, midnight + timedelta(seconds=3), 3501, "500.500", 2000)
    return {"first": first, "midnight": midnight}


def meter_block(out: str, title: str) -> list[list[str]]:
    """The rows under a meter's title, split into words, up to the next blank line."""
    lines = out.splitlines()
    start = lines.index(title) + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line.split())
    return block


def test_kwh_per_day_counts_pulses_exactly_and_marks_where_a_history_begins(env, history, today):
    result = cli(env, "energy", "--days", "4")
    assert result.code == 0, result
    assert result.out.startswith(
        "kWh per day (Europe/Copenhagen), counted by pulses (a typed-in reading is no energy)"
    )
    one = meter_block(result.out, "Meter 1: Meter 1")
    days = [today - back * totals.DAY for back in (3, 2, 1, 0)]
    assert [r[1] for r in one[:4]] == [d.isoformat() for d in days]
    assert one[0][2:] == ["-"] and one[1][2:] == ["-"]  # no history yet
    # yesterday: 1000 pulses after the first, which only starts the count; today: 2500 pulses,
    # the typed-in reading is no energy; bars scaled to the largest, 30 blocks
    assert one[2][2:] == ["yesterday", "1.000*", show.FULL * 12]
    assert one[3][2:] == ["today", "2.500", show.FULL * 30]
    assert one[4] == ["4", "days", "3.500"]
    assert meter_block(result.out, "Meter 2: Meter 2") == [["-", "(no", "history", "in", "these",
                                                             "days)"]]  # fmt: skip
    assert result.out.rstrip().endswith(FIRST_PULSE_NOTE)


def test_kwh_per_hour_of_a_day(env, history, today):
    result = cli(env, "energy", "--hours", "yesterday")
    assert result.code == 0, result
    yesterday = today - totals.DAY
    assert f"kWh per hour of {yesterday:%a %Y-%m-%d} (Europe/Copenhagen)" in result.out
    one = meter_block(result.out, "Meter 1: Meter 1")
    start, end = totals.day_bounds(yesterday, CPH)
    assert len(one) - 1 == (end - start) / timedelta(hours=1)  # every hour, and the day's total
    by_hour = {r[0]: r[1:] for r in one[:-1]}
    assert by_hour["09:00"] == ["-"]  # before the history
    assert by_hour["10:00"] == ["1.000*", show.FULL * 30]
    assert by_hour["11:00"] == ["0.000"]
    assert one[-1] == ["the", "day", "1.000"]
    assert result.out.rstrip().endswith(FIRST_PULSE_NOTE)
    # today: the hours up to now (the one running included), none after it
    before = datetime.now(CPH)
    one = meter_block(cli(env, "energy", "--hours").out, "Meter 1: Meter 1")
    after = datetime.now(CPH)
    assert one[0][:3] == ["00:00", "2.500", show.FULL * 30]
    assert before.hour + 1 <= len(one) - 1 <= after.hour + 1


def test_json_and_csv_for_a_spreadsheet(env, history, today):
    data = json.loads(cli(env, "energy", "--days", "2", "--json").out)
    assert data["unit"] == "day" and data["tz"] == "Europe/Copenhagen"
    assert data["counted_by"] == "pulses"
    assert [p["kwh"] for p in data["periods"]] == [
        {"1": "1.000", "2": None, **{str(n): None for n in range(3, 8)}},
        {"1": "2.500", "2": None, **{str(n): None for n in range(3, 8)}},
    ]
    assert data["meters"][0]["history_begins_in"] == data["periods"][0]["start"]
    assert data["meters"][1]["history_begins_in"] is None
    text = cli(env, "energy", "--days", "2", "--csv").out
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:4] == ["day", "start", "Meter 1: Meter 1", "Meter 2: Meter 2"]
    assert [r[0] for r in rows[1:]] == [(today - totals.DAY).isoformat(), today.isoformat()]
    assert [r[2:4] for r in rows[1:]] == [["1.000", ""], ["2.500", ""]]
    assert rows[2][1] == history["midnight"].astimezone(CPH).isoformat()


def test_wrong_arguments_are_one_line_and_exit_2(env):
    for args in (["--days", "0"], ["--days", "367"], ["--hours", "2024-13-01"],
                 ["--days", "2", "--hours"], ["--json", "--csv"]):  # fmt: skip
        result = cli(env, "energy", *args)
        assert result.code == 2, (args, result)
        assert result.err.count("\n") == 1
    assert cli(env, "energy", "--hours", "2999-01-01").code == 2  # not begun yet


def test_a_bar_is_exact_to_an_eighth():
    most = Decimal("10")
    assert show.bar(Decimal("10"), most, 4) == show.FULL * 4
    assert show.bar(Decimal("5"), most, 4) == show.FULL * 2
    assert show.bar(Decimal("1.25"), most, 4) == "\u258c"  # half a block
    assert show.bar(Decimal("0.0001"), most, 4) == "\u258f"  # above zero: seen
    assert show.bar(Decimal("0"), most, 4) == ""
    assert show.bar(None, most, 4) == ""
    assert show.bar(Decimal("1"), Decimal("0"), 4) == ""


# --- status: kWh today, and power honestly -----------------------------------------------------


@pytest.fixture
def status_env(env: dict[str, str], redis_db: config.RedisSettings, r: Redis) -> dict[str, str]:
    return {
        **env,
        "REDIS_HOST": redis_db.host,
        "REDIS_PORT": str(redis_db.port),
        "REDIS_DB": str(redis_db.db),
    }


def test_status_shows_kwh_today_and_the_last_power_apart_from_the_bound(status_env, sql, history):
    # meter 3: one pulse a minute ago, which carried no power; meter 4: 2000 W, 5 s ago
    now = datetime.now(UTC)
    row(sql, 3, now - timedelta(minutes=1), 1, "0.001", None)
    row(sql, 4, now - timedelta(seconds=5), 1, "0.001", None)
    row(sql, 4, now - timedelta(seconds=4), 2, "0.002", 2000)
    result = cli(status_env, "status")
    table = result.out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["meter", "name", "reading", "kWh", "last", "power", "now",
                                "last", "pulse", "pulses", "today", "kWh", "today"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in table[1:8]}
    assert rows["1"][-2:] == ["2500", "2.500"]  # the typed-in reading is no energy
    assert rows["3"][4] == "-" and rows["3"][5:7] == ["at", "most"]  # no measured power
    assert rows["3"][-2:] == ["1", "0.000*"]  # its history began today: the first pulse
    assert rows["4"][4:8] == ["2000", "W", "at", "most"]  # 4 s without a pulse: below 2000 W
    assert rows["2"][4:6] == ["-", "never"]  # no pulse at all: nothing to bound
    assert "now: no pulse since the last one, so at most this" in result.out
    data = json.loads(cli(status_env, "status", "--json").out)
    meters = {m["meter"]: m for m in data["meters"]}
    assert meters[1]["kwh_today"] == "2.500" and meters[1]["history_began_today"] is False
    assert meters[3]["last_power_w"] is None and 55 <= meters[3]["at_most_w"] <= 60
    assert meters[4]["last_power_w"] == 2000 and meters[4]["at_most_w"] < 2000
    assert meters[3]["history_began_today"] is True and meters[3]["kwh_today"] == "0.000"
    assert "*: the meter's history began today" in result.out
    assert meters[2]["at_most_w"] is None and meters[2]["last_power_w"] is None


def test_pulses_not_yet_in_postgres_keep_the_bound_back(status_env, sql, r):
    # A pulse 4 s ago at 2000 W is the latest PostgreSQL has, but an item taken 3 s ago still
    # waits in Redis: no pulse is known to be missing for only 1 s, so 2000 W may still hold.
    now = datetime.now(UTC)
    row(sql, 4, now - timedelta(seconds=5), 1, "0.001", None)
    row(sql, 4, now - timedelta(seconds=4), 2, "0.002", 2000)
    plain = json.loads(cli(status_env, "status", "--json").out)
    assert plain["meters"][3]["at_most_w"] < 2000
    taken = int(now.timestamp() * 1000) - 3000
    item = {"e": "1-a", "s": 1, "k": "t", "m": 4, "v": "1", "at": taken,
            "key": "channel:4:timestamp"}  # fmt: skip
    r.rpush("energy-worker:work", json.dumps(item))
    waiting = json.loads(cli(status_env, "status", "--json").out)
    assert waiting["meters"][3]["last_power_w"] == 2000
    assert waiting["meters"][3]["at_most_w"] is None


@pytest.mark.parametrize(("day", "count"), [(date(2024, 3, 31), 23), (date(2024, 10, 27), 25)])
def test_a_day_the_clocks_change_has_its_hours_labelled_with_the_offset(day: date, count: int):
    start, end = totals.day_bounds(day, CPH)
    periods = hour_periods(day, start, end, CPH)
    assert len(periods) == count
    labels = [p.label for p in periods]
    if count == 25:
        assert labels[2:4] == ["02:00 +02", "02:00 +01"]  # the hour that comes twice
    else:
        assert labels[1:3] == ["01:00 +01", "03:00 +02"]  # the hour that never comes
    plain = hour_periods(date(2024, 6, 1), *totals.day_bounds(date(2024, 6, 1), CPH), CPH)
    assert [p.label for p in plain][:2] == ["00:00", "01:00"] and len(plain) == 24
