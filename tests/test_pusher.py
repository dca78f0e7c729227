"""The pusher against the real PostgreSQL, Redis and a real local HTTP server; time injected."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pg8000.native
import psutil
import pytest
import trustme

from energy_worker.adapters import config, postgres, work_queue
from energy_worker.adapters.sql import totals as store
from energy_worker.adapters.work_queue import PUSH, PUSH_PROCESSING, WORK
from energy_worker.core import totals
from energy_worker.programs.pusher import MAX_BLOCK, Pusher, sheet_format
from energy_worker.programs.pusher import settings as pusher_settings
from helpers import wait_until, write_ini
from sheet_server import (
    HANG,
    AppsScript,
    Reply,
    SheetServer,
    request_line,
    script_server,
    sheet_server,
)
from tcpproxy import TcpProxy

CPH = totals.zone("Europe/Copenhagen")
PATH = "/energyRegistrations/updateEnergyRegistrations"
METERS = 7  # services/energy_worker/meters.toml


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def local(*args: int) -> datetime:
    return totals.resolve(datetime(*args), CPH)  # type: ignore[arg-type]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def set(self, now: datetime) -> None:
        self.now = now


def add_row(
    sql: pg8000.native.Connection, meter: int, kwh: str, at: datetime, typed: bool = False
) -> int:
    """A consumption row as the processor writes it (1000 pulses per kWh): its pulse count goes
    on from the row before it by the count's step, or not at all for a typed-in reading."""
    counts = int(Decimal(kwh) * 1000)
    before = sql.run(
        """SELECT meter_counts, pulses FROM consumption WHERE meter_no = :m
           AND cor_time_stamp <= :t ORDER BY cor_time_stamp DESC, index DESC LIMIT 1""",
        m=meter,
        t=at,
    )
    if before:
        ((counts_before, pulses_before),) = before
        pulses = pulses_before + (0 if typed else counts - counts_before)
    else:
        pulses = 0 if typed else counts
    ((index,),) = sql.run(
        """INSERT INTO consumption (meter_no, meter_counts, kWh, cor_time_stamp, typed_in, pulses)
           VALUES (:m, :c, :k, :t, :typed, :p) RETURNING index""",
        m=meter,
        c=counts,
        k=Decimal(kwh),
        t=at,
        typed=typed,
        p=pulses,
    )
    sql.run(
        """UPDATE meter_status_stored SET kWh = :k, meter_counts = :c, cor_time_stamp = :t,
                  pulses_counted = :p WHERE meter_no = :m""",
        m=meter,
        k=Decimal(kwh),
        c=counts,
        t=at,
        p=pulses,
    )
    return index


def data(**kwh: str) -> str:
    """The dataString with meter n's reading given as m<n>="..." and 0.00 elsewhere."""
    return ",".join(kwh.get(f"m{n}", "0.00") for n in range(1, METERS + 1))


def sheet_line(dataset: str, query: str = "") -> str:
    return request_line(f"{PATH}?{query}function=updateSheet&dataString={dataset}")


def without_fields(lines: list[str]) -> list[str]:
    """Request lines without what follows dataString (sheet_format.fields: the push's id, day,
    ...)."""
    return [re.sub(r"&id=\S*", "", line) for line in lines]


def pushed(server: SheetServer) -> list[str]:
    return without_fields(server.got())


def fields(line: str) -> dict[str, str]:
    """What a request line carries after dataString, decoded."""
    query = line.split(" ")[1].split("?", 1)[1]
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    return {k: v for k, v in pairs.items() if k not in ("function", "dataString", "token")}


def reading_at(rows: list[tuple[datetime, Any]], at: datetime) -> Any:
    """The oracle: the latest row at or before `at` (rows in insertion order)."""
    best = None
    for t, value in rows:
        if t <= at and (best is None or t >= best[0]):
            best = (t, value)
    return best[1] if best else None


def check_totals_against_history(sql: pg8000.native.Connection) -> int:
    """Every hourly and daily total equals what the history says: the readings at its
    boundaries, the energy of the pulses in between (1000 per kWh) and the typed-in corrections;
    returns the rows checked."""
    history: dict[int, list[tuple[datetime, tuple[Decimal, int]]]] = {}
    for meter, t, kwh, pulses in sql.run(
        "SELECT meter_no, cor_time_stamp, kWh, pulses FROM consumption ORDER BY index"
    ):
        history.setdefault(meter, []).append((t, (kwh, pulses)))
    checked = 0
    for table, start, end in (
        ("meter_hourly_totals", "hour_start", "hour_end"),
        ("meter_daily_totals", "day_start", "day_end"),
    ):
        for meter, s, e, k0, k1, diff, kwh_set in sql.run(
            f"SELECT meter_no, {start}, {end}, kWh_start, kWh, kWh_diff, kWh_set FROM {table}"
        ):
            rows = history.get(meter, [])
            a, z = reading_at(rows, s), reading_at(rows, e)
            assert (k0, k1) == (a and a[0], z and z[0]), (table, meter, s)
            if a is None or z is None:
                assert diff is None and kwh_set is None
            else:
                assert diff == Decimal(z[1] - a[1]) / 1000
                assert kwh_set == k1 - k0 - diff
            checked += 1
    return checked


@pytest.fixture
def make_pusher(pg, r) -> Iterator[Callable[..., Pusher]]:
    made: list[Pusher] = []

    def make(clock: Clock, url: str | None = None, **settings: object) -> Pusher:
        options: dict[str, object] = {"tz": CPH, "timeout": 2.0, **settings}
        pusher = Pusher(
            postgres.LockedSession(lambda name: postgres.connect(pg, name), "pusher"),
            r,
            pusher_settings.PushSettings(sheet_url=config.secret(url), **options),  # type: ignore[arg-type]
            clock,
        )
        made.append(pusher)
        return pusher

    yield make
    for pusher in made:
        pusher.close()


@pytest.fixture
def server() -> Iterator[SheetServer]:
    with sheet_server() as s:
        yield s


def outbox(sql: pg8000.native.Connection) -> list[list[Any]]:
    return sql.run(
        """SELECT dedup_key, data_string, attempts, status_code, last_error, sent_at IS NOT NULL
           FROM push_outbox ORDER BY id"""
    )


# --- the daily push and totals ------------------------------------------------------------------


def test_daily_push_sends_the_readings_at_midnight_once(sql, make_pusher, server):
    add_row(sql, 1, "100.000", local(2024, 6, 1, 8))
    add_row(sql, 1, "101.500", local(2024, 6, 1, 23, 59, 59))
    add_row(sql, 2, "7.125", local(2024, 6, 1, 12))
    clock = Clock(local(2024, 6, 1, 12, 30))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    add_row(sql, 1, "101.600", local(2024, 6, 2, 0, 0, 30))  # after midnight: not that day's
    clock.set(local(2024, 6, 2, 0, 1, 59))
    pusher.step(block=False)
    assert pushed(server) == []
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m1="101.50", m2="7.13"))]
    for _ in range(3):
        clock.advance(minutes=20)
        pusher.step(block=False)
    assert len(server.got()) == 1
    [(key, _data, attempts, status, error, sent)] = outbox(sql)
    assert (key, attempts, status, error, sent) == ("day:2024-06-01", 1, 200, None, True)
    rows = sql.run(
        "SELECT meter_no, kWh_start, kWh, kWh_diff FROM meter_daily_totals WHERE day = :d "
        "AND meter_no IN (1, 2) ORDER BY meter_no",
        d=date(2024, 6, 1),
    )
    assert rows == [
        [1, None, Decimal("101.500"), None],  # no history before the day started
        [2, None, Decimal("7.125"), None],
    ]
    assert check_totals_against_history(sql) > 0


def test_hourly_totals_for_each_closed_hour(sql, make_pusher):
    add_row(sql, 3, "10.000", local(2024, 6, 1, 9, 59))
    add_row(sql, 3, "10.400", local(2024, 6, 1, 10, 30))
    add_row(sql, 3, "11.000", local(2024, 6, 1, 10, 59, 59))
    clock = Clock(local(2024, 6, 1, 11, 0, 6))
    make_pusher(clock).step(block=False)
    rows = sql.run(
        "SELECT hour_start, kWh_start, kWh, kWh_diff, day FROM meter_hourly_totals "
        "WHERE meter_no = 3 ORDER BY hour_start"
    )
    assert rows[-1] == [
        local(2024, 6, 1, 10),
        Decimal("10.000"),
        Decimal("11.000"),
        Decimal("1.000"),
        date(2024, 6, 1),
    ]
    # 09:00-10:00: no history before 09:00, so no difference can be told
    assert rows[-2][1:4] == [None, Decimal("10.000"), None]
    check_totals_against_history(sql)


def test_days_missed_while_the_pusher_was_down_are_filled_in_oldest_first(sql, make_pusher, server):
    clock = Clock(local(2024, 6, 1, 12))
    add_row(sql, 1, "1.000", local(2024, 6, 1, 11))
    first = make_pusher(clock, server.base + PATH)
    first.step(block=False)
    first.close()
    # the pusher is down for three days while the processor keeps writing history
    add_row(sql, 1, "2.000", local(2024, 6, 1, 18))
    add_row(sql, 1, "3.000", local(2024, 6, 2, 18))
    add_row(sql, 1, "4.000", local(2024, 6, 3, 18))
    clock.set(local(2024, 6, 4, 15, 17))
    make_pusher(clock, server.base + PATH).step(block=False)
    assert pushed(server) == [
        sheet_line(data(m1="2.00")),
        sheet_line(data(m1="3.00")),
        sheet_line(data(m1="4.00")),
    ]
    assert [row[0] for row in outbox(sql)] == ["day:2024-06-01", "day:2024-06-02", "day:2024-06-03"]
    (hours,) = sql.run(
        "SELECT count(*) FROM meter_hourly_totals WHERE meter_no = 1 AND hour_start >= :s",
        s=local(2024, 6, 1, 11),
    )[0]
    assert hours == 13 + 24 * 2 + 15  # from 11:00 on the 1st to 15:00 on the 4th
    diffs = sql.run(
        "SELECT day, kWh_diff FROM meter_daily_totals WHERE meter_no = 1 AND kWh_diff IS NOT NULL "
        "ORDER BY day"
    )
    assert diffs == [[date(2024, 6, 2), Decimal("1.000")], [date(2024, 6, 3), Decimal("1.000")]]
    check_totals_against_history(sql)


@pytest.mark.parametrize(
    ("day", "hours", "midnight_utc"),
    [
        (date(2024, 3, 31), 23, utc(2024, 3, 31, 22)),
        (date(2024, 10, 27), 25, utc(2024, 10, 27, 23)),
    ],
)
def test_dst_change_days(sql, make_pusher, server, day, hours, midnight_utc):
    start = totals.day_start(day, CPH)
    add_row(sql, 5, "50.000", start - timedelta(minutes=1))
    t = start
    kwh = Decimal("50.000")
    while t < midnight_utc:  # one kWh in every real hour of the day
        t += timedelta(minutes=30)
        kwh += Decimal("0.5")
        add_row(sql, 5, str(kwh), t - timedelta(seconds=1))
    add_row(sql, 5, "999.000", midnight_utc)  # exactly at midnight: belongs to the day
    clock = Clock(start + timedelta(hours=1))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    clock.set(midnight_utc + timedelta(minutes=2))
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m5="999.00"))]
    rows = sql.run(
        "SELECT kWh_diff FROM meter_hourly_totals WHERE meter_no = 5 AND day = :d "
        "ORDER BY hour_start",
        d=day,
    )
    assert len(rows) == hours
    assert all(diff == Decimal("1.000") for (diff,) in rows[:-1])
    [(day_diff,)] = sql.run(
        "SELECT kWh_diff FROM meter_daily_totals WHERE meter_no = 5 AND day = :d", d=day
    )
    assert day_diff == sum(diff for (diff,) in rows) == Decimal("999.000") - Decimal("50.000")
    check_totals_against_history(sql)


def test_a_typed_in_reading_is_no_energy_but_the_sheet_gets_the_reading(sql, make_pusher, server):
    """A person types in 279.97 kWh: the meter is set (the readings and the push follow it), but
    the hour and day count only the pulses; the jump is kWh_set."""
    add_row(sql, 1, "12.000", local(2024, 6, 1, 9, 59))
    add_row(sql, 1, "12.300", local(2024, 6, 1, 10, 20))
    add_row(sql, 1, "279.970", local(2024, 6, 1, 10, 30), typed=True)
    add_row(sql, 1, "280.170", local(2024, 6, 1, 10, 59))
    clock = Clock(local(2024, 6, 1, 9, 0))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m1="280.17"))]  # the meter's reading
    [hour] = sql.run(
        "SELECT kWh_start, kWh, kWh_diff, kWh_set FROM meter_hourly_totals "
        "WHERE meter_no = 1 AND hour_start = :h",
        h=local(2024, 6, 1, 10),
    )
    assert hour == [Decimal("12"), Decimal("280.17"), Decimal("0.5"), Decimal("267.67")]
    [day] = sql.run(
        "SELECT kWh_start, kWh, kWh_diff, kWh_set FROM meter_daily_totals WHERE meter_no = 1"
    )
    assert day == [None, Decimal("280.17"), None, None]  # its history began that day
    assert check_totals_against_history(sql) > 0


def test_old_dead_letters_are_deleted_hourly(sql, make_pusher):
    kept = store.DEAD_LETTERS_KEPT
    sql.run(
        "INSERT INTO dead_letters (at, key, value, reason) "
        "SELECT now(), 'junk' || n, 'x', 'unknown key' FROM generate_series(1, :n) n",
        n=kept + 5,
    )
    clock = Clock(local(2024, 6, 1, 9, 0))
    pusher = make_pusher(clock)
    pusher.step(block=False)
    assert sql.run("SELECT count(*) FROM dead_letters") == [[kept]]
    assert sql.run("SELECT key FROM dead_letters ORDER BY id LIMIT 1") == [["junk6"]]  # newest


# --- late history ---------------------------------------------------------------------------


def test_a_backlog_processed_late_corrects_the_totals(sql, make_pusher):
    add_row(sql, 2, "5.000", local(2024, 6, 1, 7))
    clock = Clock(local(2024, 6, 1, 12, 0, 6))
    pusher = make_pusher(clock)
    pusher.step(block=False)
    [(before,)] = sql.run(
        "SELECT kWh_diff FROM meter_hourly_totals WHERE meter_no = 2 AND hour_start = :h",
        h=local(2024, 6, 1, 9),
    )
    assert before == 0
    # PostgreSQL was down; the processor drains its backlog now, with the pulses' own times
    add_row(sql, 2, "5.300", local(2024, 6, 1, 9, 20))
    add_row(sql, 2, "5.900", local(2024, 6, 1, 9, 50))
    clock.set(local(2024, 6, 1, 13, 0, 6))
    pusher.step(block=False)
    [(after,)] = sql.run(
        "SELECT kWh_diff FROM meter_hourly_totals WHERE meter_no = 2 AND hour_start = :h",
        h=local(2024, 6, 1, 9),
    )
    assert after == Decimal("0.900")
    check_totals_against_history(sql)


def move_row(sql: pg8000.native.Connection, index: int, kwh: str, at: datetime) -> None:
    """The processor moves a deadband run's second row forward (store.update_rows)."""
    sql.run(
        "UPDATE consumption SET kWh = :k, pulses = pulses + :c - meter_counts, meter_counts = :c, "
        "cor_time_stamp = :t, time_stamp = now() WHERE index = :i",
        k=Decimal(kwh),
        c=int(Decimal(kwh) * 1000),
        t=at,
        i=index,
    )


def start_run(sql: pg8000.native.Connection, meter: int, first: int, second: int) -> None:
    """meter_status as the processor leaves it: a run with these first and second rows."""
    sql.run(
        "UPDATE meter_status_stored SET run_index = :f, upper_index = :s WHERE meter_no = :m",
        f=first,
        s=second,
        m=meter,
    )


def work_item(at: datetime) -> str:
    at_ms = int(at.timestamp() * 1000)
    return json.dumps({"e": "x", "s": 1, "k": "t", "m": 4, "v": "5", "at": at_ms, "key": "k"})


@pytest.mark.parametrize(
    ("old_at", "new_at"),
    [
        ((10, 46), (10, 58)),  # within 10:45-11:00: the reading at 11:00 changes
        ((10, 50), (11, 0)),  # to 11:00 itself: the boundary's own pulse counts at 11:00
    ],
)
def test_a_deadband_row_moved_after_its_hour_was_computed_is_followed(
    sql, make_pusher, r, old_at, new_at
):
    first = add_row(sql, 4, "20.000", local(2024, 6, 1, 10, 10))
    second = add_row(sql, 4, "20.500", local(2024, 6, 1, *old_at))
    start_run(sql, 4, first, second)
    # the processor is behind: a pulse in the row's quarter hour still waits in Redis
    r.rpush(WORK, work_item(local(2024, 6, 1, *new_at)))
    clock = Clock(local(2024, 6, 1, 11, 20, 6))
    pusher = make_pusher(clock)
    pusher.step(block=False)
    check_totals_against_history(sql)
    # it catches up: the run's second row moves forward within its quarter hour
    move_row(sql, second, "20.700", local(2024, 6, 1, *new_at))
    r.delete(WORK)
    clock.set(local(2024, 6, 1, 12, 0, 6))
    pusher.step(block=False)
    [(kwh_at_11,)] = sql.run(
        "SELECT kWh FROM meter_hourly_totals WHERE meter_no = 4 AND hour_end = :e",
        e=local(2024, 6, 1, 11),
    )
    assert kwh_at_11 == Decimal("20.700" if old_at < (11, 0) else "20.000")
    assert check_totals_against_history(sql) > 0


def test_a_meter_quiet_or_in_its_deadband_since_long_ago_costs_only_the_new_hours(
    sql, make_pusher, monkeypatch, caplog
):
    """Only what can have changed is recomputed: not everything since a run's first row."""
    # meter 3: its run started a year ago, and it has been quiet since
    quiet = add_row(sql, 3, "7.000", local(2023, 6, 1, 10, 10))
    start_run(sql, 3, quiet, add_row(sql, 3, "7.002", local(2023, 6, 1, 10, 20)))
    # meter 4: in its deadband for a year; its second row keeps moving
    long_ago = add_row(sql, 4, "1.000", local(2023, 6, 1, 9))
    add_row(sql, 4, "2.000", local(2024, 6, 1, 11, 44, 59))
    start_run(sql, 4, long_ago, add_row(sql, 4, "2.010", local(2024, 6, 1, 11, 59, 30)))
    # the pusher has been running all along: every hour up to 11:00 is computed
    sql.run(
        """UPDATE pusher_state SET tz = :tz, next_push_day = :day, totals_until = :until,
               seen_index = (SELECT max(index) FROM consumption)""",
        tz=CPH.key,
        day=date(2024, 6, 1),
        until=local(2024, 6, 1, 11),
    )
    clock = Clock(local(2024, 6, 1, 12, 0, 5))
    pusher = make_pusher(clock)
    pusher.step(block=False)

    computed: list[datetime] = []
    upsert_hours = store.upsert_hours

    def recording(con, hours, now):
        computed.extend(start for start, _end, _day in hours)
        return upsert_hours(con, hours, now)

    monkeypatch.setattr(store, "upsert_hours", recording)
    # meter 4 goes on: a new second row in 12:30-12:45, moved to 12:44
    moving = add_row(sql, 4, "2.100", local(2024, 6, 1, 12, 31))
    move_row(sql, moving, "2.140", local(2024, 6, 1, 12, 44))
    start_run(sql, 4, long_ago, moving)
    clock.set(local(2024, 6, 1, 13, 0, 5))
    with caplog.at_level(logging.INFO):
        pusher.step(block=False)
    # 11:00-12:00 again (meter 4's row at 11:59:30 could still move then), and the new hour
    assert computed == [local(2024, 6, 1, 11), local(2024, 6, 1, 12)]
    assert "history changed back" not in caplog.text  # recomputed, but nothing differed
    computed.clear()
    clock.set(local(2024, 6, 1, 14, 0, 5))
    pusher.step(block=False)
    assert computed == [local(2024, 6, 1, 13)]  # nothing changed: only the hour that ended
    computed.clear()
    clock.set(local(2024, 6, 1, 14, 30))
    pusher.step(block=False)
    assert computed == []  # not yet due
    assert check_totals_against_history(sql) > 0


# --- the outbox: failures and recovery ------------------------------------------------------


def test_failures_are_retried_with_backoff_until_answered(sql, make_pusher, server):
    add_row(sql, 1, "12.340", local(2024, 6, 1, 20))
    # Apps Script answers its failures with status 200
    server.script = [Reply(200, "ERROR: the sheet is busy, try again"), HANG]
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, server.base + PATH, timeout=0.5)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert len(server.got()) == 1
    assert list(outbox(sql)[0][2:]) == [
        1,
        200,
        "HTTP 200, the script failed: 'ERROR: the sheet is busy, try again'",
        False,
    ]
    pusher.step(block=False)  # not due yet: nothing sent
    assert len(server.got()) == 1
    assert 0 < pusher.wake_in() <= 30
    clock.advance(seconds=30)
    pusher.step(block=False)  # hangs: a timeout
    assert len(server.got()) == 2
    assert list(outbox(sql)[0][2:]) == [2, None, "no answer within 0.5 s", False]
    clock.advance(seconds=59)
    pusher.step(block=False)
    assert len(server.got()) == 2  # the backoff doubled to 60 s
    clock.advance(seconds=1)
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m1="12.34"))] * 3
    assert list(outbox(sql)[0][2:]) == [3, 200, None, True]


def test_a_webhook_down_for_days_gets_every_day_in_order_once(sql, make_pusher):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}{PATH}?token=abc"
    clock = Clock(local(2024, 6, 1, 12))
    pusher = make_pusher(clock, url, retry_max=3600.0)
    pusher.step(block=False)
    for day in range(1, 5):
        add_row(sql, 1, f"{day}.000", local(2024, 6, day, 12))
        clock.set(local(2024, 6, day + 1, 0, 2))
        pusher.step(block=False)
    rows = outbox(sql)
    assert [row[0] for row in rows] == [f"day:2024-06-0{d}" for d in range(1, 5)]
    assert rows[0][3:5] == [None, "connection failed"]
    assert all(row[2] == 0 for row in rows[1:])  # newer ones wait behind the oldest
    with sheet_server(port) as server:
        clock.advance(hours=2)
        pusher.step(block=False)
        assert pushed(server) == [sheet_line(data(m1=f"{d}.00"), "token=abc&") for d in range(1, 5)]
        clock.advance(minutes=30)
        pusher.step(block=False)
        assert len(server.got()) == 4
        assert all(row[5] for row in outbox(sql))


def test_the_push_waits_for_the_processor_to_pass_midnight(sql, make_pusher, server, r):
    add_row(sql, 1, "1.000", local(2024, 6, 1, 22))
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    at_ms = int(local(2024, 6, 1, 23, 59, 59).timestamp() * 1000)
    late = {"e": "x", "s": 7, "k": "t", "m": 1, "v": "5", "at": at_ms, "key": "channel:1:timestamp"}
    r.rpush(WORK, json.dumps(late))
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert pushed(server) == []
    assert pusher.wake_in() <= 30
    # the processor commits it (a pulse at 23:59:59) and takes it off the list
    add_row(sql, 1, "1.001", local(2024, 6, 1, 23, 59, 59))
    r.delete(WORK)
    clock.advance(seconds=30)
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m1="1.00"))]
    assert outbox(sql)[0][1] == data(m1="1.00")


def test_the_push_goes_anyway_when_the_processor_stays_behind(sql, make_pusher, server, r):
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, server.base + PATH, history_wait=timedelta(minutes=10))
    pusher.step(block=False)
    stuck = {"e": "x", "s": 1, "k": "t", "m": 1, "v": "5", "at": 0, "key": "k"}
    r.rpush(WORK, json.dumps(stuck))
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert pushed(server) == []
    clock.set(local(2024, 6, 2, 0, 12))
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data())]


def feed_2000_w_across_midnight(r, spawn) -> None:
    """The real router's items and the real processor: meter 1 at 2000 W, a pulse every 1.8 s
    from 23:59:30 to 00:00:40; 17 pulses fall before midnight."""
    start_ms = int(local(2024, 6, 1, 23, 59, 30).timestamp() * 1000)
    queues = work_queue.Queues(r, frozenset(range(1, 8)))
    for i in range(40):
        r.set("channel:1:timestamp", str(10_000 + i * 1800))
        queues.route(b"channel:1:timestamp", at_ms=start_ms + i * 1800)
    r.set("stop", "true")
    queues.route(b"stop")
    assert spawn("processor").wait_exit(30) == 0


def test_totals_and_push_from_the_processors_own_history(spawn, sql, make_pusher, server, r):
    feed_2000_w_across_midnight(r, spawn)
    history = [(t, k) for t, k in sql.run("SELECT cor_time_stamp, kWh FROM consumption")]
    expected = reading_at(history, local(2024, 6, 2))
    assert expected is not None
    clock = Clock(local(2024, 6, 1, 23, 59))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 1, 0, 5))
    pusher.step(block=False)
    assert pushed(server) == [sheet_line(data(m1=sheet_format.kwh_text(expected)))]
    assert check_totals_against_history(sql) >= 7 * 2


def test_the_midnight_reading_is_the_last_pulse_before_midnight(spawn, sql, r):
    feed_2000_w_across_midnight(r, spawn)
    history = [(t, k) for t, k in sql.run("SELECT cor_time_stamp, kWh FROM consumption")]
    assert reading_at(history, local(2024, 6, 2)) == Decimal("0.017")


# --- requests through Redis -------------------------------------------------------------------


def request_item(seq: int) -> bytes:
    item = {"e": "1700000000000-abcd", "s": seq, "k": "g", "v": "true", "at": 1, "key": "x"}
    return json.dumps(item).encode()


def test_pushtogoogle_sends_the_current_readings_at_once(sql, make_pusher, server, r):
    add_row(sql, 6, "3362.789", local(2024, 6, 1, 9))
    clock = Clock(local(2024, 6, 1, 10))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    r.rpush(PUSH, request_item(1))
    pusher.step(block=False)  # takes and records it
    pusher.step(block=False)  # sends it
    assert pushed(server) == [sheet_line(data(m6="3362.79"))]
    assert r.llen(PUSH) == 0 and r.llen(PUSH_PROCESSING) == 0
    # the same item again (a crash after recording, before removing it) is not sent twice
    pusher.close()
    r.rpush(PUSH_PROCESSING, request_item(1))
    make_pusher(clock, server.base + PATH).step(block=False)
    assert len(server.got()) == 1 and r.llen(PUSH_PROCESSING) == 0


def test_200_requests_are_one_push(sql, make_pusher, server, r):
    """`pushtogoogle` written 200 times while the pusher is busy: one outbox row, one request
    to Google (it used to: 201 rows, and so 201 requests). And 200 more while the webhook fails:
    still one row, sent with the newest readings when its backoff is over."""
    add_row(sql, 6, "3362.789", local(2024, 6, 1, 9))
    clock = Clock(local(2024, 6, 1, 10))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    queues = work_queue.Queues(r, frozenset(range(1, METERS + 1)))

    def requests(count: int, step: bool) -> None:
        for _ in range(count):
            r.set("pushtogoogle", "true")
            queues.route(b"pushtogoogle")
            if step:
                pusher.step(block=False)

    requests(200, step=False)
    pusher.step(block=False)  # takes and records it
    pusher.step(block=False)  # sends it
    assert pushed(server) == [sheet_line(data(m6="3362.79"))] and len(outbox(sql)) == 1
    server.script = [500]
    requests(1, step=True)
    add_row(sql, 6, "3363.000", local(2024, 6, 1, 10))
    requests(200, step=True)
    assert len(server.got()) == 2
    assert [row[1:4] for row in outbox(sql)[1:]] == [[data(m6="3363.00"), 1, 500]]
    clock.advance(seconds=30)  # its backoff kept
    pusher.step(block=False)
    assert pushed(server)[2:] == [sheet_line(data(m6="3363.00"))]
    assert len(outbox(sql)) == 2 and outbox(sql)[1][5] is True


def test_a_request_waits_in_redis_while_postgres_is_unreachable(pg, r, server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = config.PostgresSettings("127.0.0.1", s.getsockname()[1], pg.database, pg.user)
    clock = Clock(local(2024, 6, 1, 10))
    settings = pusher_settings.PushSettings(sheet_url=config.secret(server.base + PATH), tz=CPH)
    broken = Pusher(
        postgres.LockedSession(lambda name: postgres.connect(dead, name, timeout=1), "pusher"),
        r,
        settings,
        clock,
    )
    r.rpush(PUSH, request_item(5))
    with pytest.raises(postgres.ERRORS):
        broken.requests.take(0)
    assert r.lrange(PUSH_PROCESSING, 0, -1) == [request_item(5)]  # kept, not lost
    fine = Pusher(
        postgres.LockedSession(lambda name: postgres.connect(pg, name), "pusher"),
        r,
        settings,
        clock,
    )
    try:
        fine.step(block=False)
        fine.step(block=False)
    finally:
        fine.close()
    assert len(server.got()) == 1 and r.llen(PUSH_PROCESSING) == 0


def test_without_a_sheet_url_totals_run_and_pushes_are_skipped(sql, make_pusher, r, caplog):
    add_row(sql, 1, "1.000", local(2024, 6, 1, 9))
    clock = Clock(local(2024, 6, 1, 10))
    pusher = make_pusher(clock)
    r.rpush(PUSH, request_item(1))
    with caplog.at_level(logging.INFO):
        pusher.step(block=False)
        pusher.step(block=False)
    assert "pushtogoogle ignored: GOOGLE_WEBHOOK_URL is not set" in caplog.text
    clock.set(local(2024, 6, 3, 0, 5))
    pusher.step(block=False)
    assert outbox(sql) == [] and r.llen(PUSH) == 0 and r.llen(PUSH_PROCESSING) == 0
    [(next_day,)] = sql.run("SELECT next_push_day FROM pusher_state")
    assert next_day == date(2024, 6, 3)  # setting a URL later does not flood the sheet
    [(days,)] = sql.run("SELECT count(DISTINCT day) FROM meter_daily_totals")
    assert days == 2


def test_a_second_pusher_on_the_same_database_does_not_send(sql, make_pusher, server, r):
    add_row(sql, 1, "5.000", local(2024, 6, 1, 20))
    clock = Clock(local(2024, 6, 1, 23))
    first = make_pusher(clock, server.base + PATH)
    first.step(block=False)  # holds the lock from here on
    second = make_pusher(clock, server.base + PATH)
    r.rpush(PUSH, request_item(1))
    clock.set(local(2024, 6, 2, 0, 2))
    for _ in range(2):
        with pytest.raises(postgres.LockHeld):
            second.step(block=False)
        # it touched nothing: no request taken, no push recorded, nothing sent
        assert pushed(server) == [] and outbox(sql) == [] and r.llen(PUSH) == 1
    first.step(block=False)  # the day's push goes, and the request is recorded
    with pytest.raises(postgres.LockHeld):
        second.step(block=False)
    first.step(block=False)  # the request goes
    assert pushed(server) == [sheet_line(data(m1="5.00"))] * 2
    first.close()  # the first one is gone: the second one takes over, with nothing to resend
    clock.advance(hours=1)
    second.step(block=False)
    assert len(server.got()) == 2
    assert [row[2:] for row in outbox(sql)] == [[1, 200, None, True]] * 2


def test_idle_it_sleeps_until_the_next_due_instant(make_pusher, server):
    clock = Clock(local(2024, 6, 1, 10, 30))
    pusher = make_pusher(clock, server.base + PATH)
    pusher.step(block=False)
    # the scheduler runs on the real clock; look at our own instants
    pusher.schedule.scheduler.clear()
    assert pusher.wake_in() == MAX_BLOCK  # capped; the next hour is 30 minutes away
    clock.set(local(2024, 6, 1, 10, 59, 58))
    assert pusher.wake_in() == pytest.approx(7)  # 11:00:05
    clock.set(local(2024, 6, 1, 23, 59, 59))
    pusher.step(block=False)
    pusher.schedule.scheduler.clear()
    assert pusher.wake_in() == pytest.approx(6)  # 00:00:05 totals come before the 00:02 push


# --- the process --------------------------------------------------------------------------------


def test_the_process_pushes_on_request_keeps_secrets_and_stops_cleanly(spawn, r, server):
    url = server.base + "/macros/s/SECRETID/exec?token=s3cret"
    proc = spawn("pusher", GOOGLE_WEBHOOK_URL=url, TZ="Europe/Copenhagen")
    proc.wait_for_log("pushing to http://127.0.0.1:")
    r.rpush(PUSH, request_item(9))
    lines = without_fields(server.wait_for(1))
    assert lines == [
        request_line(
            "/macros/s/SECRETID/exec?token=s3cret&function=updateSheet&dataString=" + data()
        )
    ]
    proc.wait_for_log("pushed the readings requested at")
    wait_until(lambda: r.llen(PUSH_PROCESSING) == 0, what="the request to be acknowledged")
    # idle: blocked in BLMOVE, not polling (a one-second measurement, not a synchronisation)
    assert psutil.Process(proc.pid).cpu_percent(interval=1.0) < 5
    proc.kill(signal.SIGTERM)
    assert proc.wait_exit() == 143  # a signal, not a stop item
    log = proc.log()
    assert "SECRETID" not in log and "s3cret" not in log
    assert "stopped by SIGTERM" in log


def test_the_process_without_url_says_so_once(spawn, r):
    proc = spawn("pusher", GOOGLE_WEBHOOK_URL="")
    proc.wait_for_log("GOOGLE_WEBHOOK_URL is not set: totals only, no pushes to the Google Sheet")
    r.rpush(PUSH, request_item(1))
    wait_until(lambda: r.llen(PUSH) == 0 and r.llen(PUSH_PROCESSING) == 0, what="the request")
    # nothing but the router writes this list, and only requests: anything else is kept aside
    r.rpush(PUSH, json.dumps({"e": "e", "s": 2, "k": "x", "v": "true", "at": 1, "key": "stop"}))
    wait_until(lambda: r.llen(work_queue.DEADLETTER) == 1, what="the stray item to be kept aside")
    assert (
        "a STOP item on the push list" in json.loads(r.lindex(work_queue.DEADLETTER, 0))["reason"]
    )
    assert proc.popen.poll() is None


def test_the_process_survives_a_database_outage_with_a_request_in_hand(
    spawn, r, pg, server, tmp_path
):
    proxy = TcpProxy(pg.host, pg.port)
    try:
        ini = write_ini(replace(pg, host="127.0.0.1", port=proxy.port), tmp_path / "proxy.ini")
        proc = spawn("pusher", POSTGRES_INI=str(ini), GOOGLE_WEBHOOK_URL=server.base + PATH)
        proc.wait_for_log("pushing to http://127.0.0.1:")
        proxy.cut()
        r.rpush(PUSH, request_item(3))
        proc.wait_for_log("PostgreSQL unavailable")
        assert pushed(server) == []
        assert r.llen(PUSH) + r.llen(PUSH_PROCESSING) == 1  # kept in Redis meanwhile
        proxy.restore()
        assert without_fields(server.wait_for(1, 30)) == [sheet_line(data())]
        proc.wait_for_log("PostgreSQL is back")
        wait_until(lambda: r.llen(PUSH_PROCESSING) == 0, what="the request to be acknowledged")
    finally:
        proxy.close()


def test_the_process_waits_while_another_pusher_holds_the_database(spawn, r, server):
    first = spawn("pusher", GOOGLE_WEBHOOK_URL=server.base + PATH)
    r.rpush(PUSH, request_item(1))
    server.wait_for(1)  # the first one works, and holds the lock
    second = spawn("pusher", GOOGLE_WEBHOOK_URL=server.base + PATH)
    second.wait_for_log("another pusher is working on this database")
    r.rpush(PUSH, request_item(2))
    assert len(server.wait_for(2)) == 2
    first.wait_for_log("pushed the readings requested at")
    first.kill(signal.SIGTERM)
    second.wait_for_log("PostgreSQL is back")  # the lock is free: it takes over
    r.rpush(PUSH, request_item(3))
    assert without_fields(server.wait_for(3)) == [sheet_line(data())] * 3
    second.wait_for_log("pushed the readings requested at")
    log = second.log()
    assert log.count("another pusher is working on this database") == 1  # said once
    assert log.count("pushed the readings requested at") == 1  # only the third


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PUSH_TIME": "25:00"}, "PUSH_TIME"),
        ({"TZ": "Mars/Olympus"}, "TZ 'Mars/Olympus' is not a known time zone"),
        ({"GOOGLE_WEBHOOK_URL": "ftp://secret-host/x"}, "GOOGLE_WEBHOOK_URL must be"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(spawn, env, message):
    proc = spawn("pusher", **env)
    assert proc.wait_exit() == 2
    assert message in proc.log()
    assert "secret-host" not in proc.log()


def test_meter_totals_has_one_row_per_day_with_every_meters_reading(sql, make_pusher):
    """docs/DOMAIN.md's shape of the original's meter_totals, over the pusher's daily totals."""
    add_row(sql, 1, "10.000", local(2024, 6, 1, 12))
    add_row(sql, 1, "12.500", local(2024, 6, 2, 12))
    add_row(sql, 2, "3.000", local(2024, 6, 2, 13))
    make_pusher(Clock(local(2024, 6, 3, 0, 5))).step(block=False)
    rows = sql.run(
        "SELECT day, kWh_1, kWh_diff_1, kWh_2, kWh_diff_2 FROM meter_totals ORDER BY day"
    )
    assert [tuple(r) for r in rows] == [
        (date(2024, 6, 1), Decimal("10.000"), None, None, None),
        (date(2024, 6, 2), Decimal("12.500"), Decimal("2.500"), Decimal("3.000"), None),
    ]


# --- the sheet's Apps Script: each push once, each meter in its own column --------------------
# A script-like endpoint (sheet_server.script_server) runs docs/google-apps-script/Code.gs itself
# behind Google's redirect, over https.

SCRIPT_PATH = "/macros/s/KEY/exec"


@pytest.fixture
def script(tmp_path, monkeypatch) -> Iterator[SheetServer]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # the client trusts the test's CA
    with script_server(context) as server:
        yield server


def only_meters(sql: pg8000.native.Connection, names: dict[int, str]) -> None:
    """Configure just these meters, with these names (as the set-up would from meters.toml)."""
    for table in ("meter_status_stored", "meter_metadata"):
        sql.run(f"DELETE FROM {table} WHERE meter_no <> ALL(CAST(:k AS int[]))", k=list(names))
    for number, name in names.items():
        sql.run("UPDATE meter_metadata SET meter_name = :n WHERE meter_no = :m", n=name, m=number)


def installation(sql: pg8000.native.Connection) -> str:
    return str(sql.run("SELECT id FROM installation")[0][0])


def script_calls(server: SheetServer) -> list[str]:
    return [line for line in server.got() if "/exec?" in line]


def test_each_push_names_its_meters_and_day_and_each_meter_keeps_its_column(
    sql, make_pusher, script
):
    # meters 1, 3 and 5: the sheet's columns are theirs, by number, not by position
    odd = 'Heat "pump" {1,null} \\'  # as a driver's array literal would break it
    only_meters(sql, {1: "House", 3: "Boiler, upstairs & co", 5: odd})
    add_row(sql, 1, "100.000", local(2024, 6, 1, 8))
    add_row(sql, 3, "7.125", local(2024, 6, 1, 12))
    add_row(sql, 5, "3.000", local(2024, 6, 1, 13))
    clock = Clock(local(2024, 6, 1, 12, 30))
    pusher = make_pusher(clock, script.base + SCRIPT_PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    day_id = f"{installation(sql)}:day:2024-06-01"
    call, follow = script.got()  # the script, then Google's redirect to its answer
    assert call.startswith(f"GET {SCRIPT_PATH}?function=updateSheet&dataString=100.00,7.13,3.00&")
    assert fields(call) == {
        "id": day_id,
        "day": "2024-06-01",
        "at": "2024-06-02T00:00:00+02:00",  # the midnight that ended the day, in TZ
        "meters": "1,3,5",
        "name1": "House",
        "name3": "Boiler, upstairs & co",
        "name5": odd,
    }
    assert follow.startswith("GET /macros/echo?user_content_key=")
    assert list(outbox(sql)[0][2:]) == [1, 200, None, True]
    header, row = script.apps_script.cells()
    assert header == ["Received", "Day", "Readings at", "Push id", "Meter 1: House",
                      "Meter 3: Boiler, upstairs & co", f"Meter 5: {odd}"]  # fmt: skip
    assert row[1:] == ["2024-06-01", "2024-06-01T22:00:00.000Z", day_id, 100, 7.13, 3]

    # Meter 7 comes, meter 3 is renamed: a column for 7 at the right, 3 keeps its own
    sql.run("INSERT INTO meter_metadata (meter_no, meter_name, pulse_per_kWh, max_energy) "
            "VALUES (7, 'Garage', 1000, 17250)")  # fmt: skip
    sql.run("INSERT INTO meter_status_stored (meter_no) VALUES (7)")
    sql.run("UPDATE meter_metadata SET meter_name = 'Hot water' WHERE meter_no = 3")
    add_row(sql, 7, "1.500", local(2024, 6, 2, 9))
    r = pusher.r
    r.rpush(PUSH, request_item(4))
    clock.set(local(2024, 6, 2, 10))
    pusher.step(block=False)  # records the request
    pusher.step(block=False)  # sends it
    request = script_calls(script)[-1]
    assert fields(request)["id"] == f"{installation(sql)}:request:1700000000000-abcd:4"
    assert fields(request)["day"] == "2024-06-02" and fields(request)["meters"] == "1,3,5,7"
    header, _first, second = script.apps_script.cells()
    assert header[4:] == ["Meter 1: House", "Meter 3: Hot water", f"Meter 5: {odd}",
                          "Meter 7: Garage"]  # fmt: skip
    assert second[1] == "2024-06-02" and second[4:] == [100, 7.13, 3, 1.5]


def test_a_retry_after_the_redirect_failed_writes_no_second_row(sql, make_pusher, script):
    # Apps Script runs the script on the first request: when the follow of its redirect fails,
    # the row is written but no answer came, and the retry asks again with the same id.
    add_row(sql, 1, "12.340", local(2024, 6, 1, 20))
    script.fail_follows = 1
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, script.base + SCRIPT_PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    assert len(script.apps_script.cells()) == 2  # the header and the row
    [(_key, _data, attempts, _status, error, sent)] = outbox(sql)
    assert (attempts, sent) == (1, False) and error  # failed: it is retried
    clock.advance(seconds=30)
    pusher.step(block=False)
    assert list(outbox(sql)[0][2:]) == [2, 200, None, True]
    assert len(script.apps_script.cells()) == 2  # still one row
    first, again = script_calls(script)
    assert first == again  # the same push, the same id
    clock.set(local(2024, 6, 3, 0, 2))  # the next day is a row of its own
    pusher.step(block=False)
    assert [row[1] for row in script.apps_script.cells()] == ["Day", "2024-06-01", "2024-06-02"]


def test_an_error_from_the_script_is_a_failure_and_retried(sql, make_pusher, script):
    add_row(sql, 1, "12.340", local(2024, 6, 1, 20))
    script.apps_script.lock_busy(True)  # the script answers "ERROR: the sheet is busy, ..."
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, script.base + SCRIPT_PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    [(_key, _data, attempts, _status, error, sent)] = outbox(sql)
    assert (attempts, sent) == (1, False) and "ERROR: the sheet is busy" in (error or "")
    script.apps_script.lock_busy(False)
    clock.advance(seconds=30)
    pusher.step(block=False)
    assert list(outbox(sql)[0][2:]) == [2, 200, None, True]
    assert len(script.apps_script.cells()) == 2


def test_a_sign_in_page_is_a_failure_and_retried(sql, make_pusher, script):
    # "Who has access" is not "Anyone": Google answers 200 with its sign-in page
    add_row(sql, 1, "12.340", local(2024, 6, 1, 20))
    script.sign_in = True
    clock = Clock(local(2024, 6, 1, 23))
    pusher = make_pusher(clock, script.base + SCRIPT_PATH)
    pusher.step(block=False)
    clock.set(local(2024, 6, 2, 0, 2))
    pusher.step(block=False)
    [(_key, _data, attempts, _status, error, sent)] = outbox(sql)
    assert (attempts, sent) == (1, False) and "access for Anyone" in (error or "")
    assert script.apps_script.cells() == []  # the script never ran
    script.sign_in = False  # the owner fixes the deployment
    clock.advance(seconds=30)
    pusher.step(block=False)
    assert list(outbox(sql)[0][2:]) == [2, 200, None, True]
    assert len(script.apps_script.cells()) == 2


GOOD = {
    "function": "updateSheet", "dataString": "1.00,2.50", "id": "abc:day:2024-06-01",
    "day": "2024-06-01", "at": "2024-06-02T00:00:00+02:00", "meters": "1,3",
}  # fmt: skip
NO_ID = "ERROR: id is missing or not an id (energy-worker older than this script?)"


@pytest.mark.parametrize(
    ("change", "answer"),
    [
        ({}, "OK"),
        ({"function": "other"}, "ERROR: function must be updateSheet"),
        ({"dataString": ""}, "ERROR: dataString is missing"),
        ({"dataString": "1,2,3,4,5,6,7,8,9", "meters": "1,2,3,4,5,6,7,8,9"},
         "ERROR: at most 8 values, got 9"),
        ({"dataString": "1.00,=2"}, "ERROR: value 2 is not a number like 279.97"),
        ({"id": None}, NO_ID),
        ({"id": "a b"}, NO_ID),
        ({"day": "1.6.2024"}, "ERROR: day is missing or not a day like 2024-06-01"),
        ({"at": "tomorrow"}, "ERROR: at is missing or not a time like 2024-06-02T00:00:00+02:00"),
        ({"meters": None}, "ERROR: meters must name the meter of each of the 2 values"),
        ({"meters": "1"}, "ERROR: meters must name the meter of each of the 2 values"),
        ({"meters": "1,0"}, "ERROR: meters must be meter numbers, 1 to 99"),
        ({"meters": "1,01"}, "ERROR: meters must be meter numbers, 1 to 99"),
        ({"meters": "3,3"}, "ERROR: meter 3 is named twice"),
    ],
)  # fmt: skip
def test_the_script_writes_a_good_push_and_refuses_anything_else(change, answer):
    script = AppsScript()
    parameter = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert script.get(parameter) == answer
    assert len(script.cells()) == (2 if answer == "OK" else 0)
    if answer == "OK":
        assert script.get(parameter) == "OK: push abc:day:2024-06-01 was written before"
        assert len(script.cells()) == 2


def test_a_meters_name_is_text_in_the_header():
    script = AppsScript()
    assert script.get({**GOOD, "name1": '=HYPERLINK("x")\x07' + "n" * 200}) == "OK"
    header = script.cells()[0]
    assert header[4] == 'Meter 1: =HYPERLINK("x")' + "n" * 85  # no control character, 100 long
    assert header[5] == "Meter 3"  # no name given
