"""The pusher's SQL (services/energy_worker/adapters/sql/totals.py) on a small hand-made history:
totals of hours and days (pulses, and what a typed-in reading set), what changed since a pass,
its own state, the outbox and the dead letters' pruning. The pusher using them, across time
zones and outages, is tests/test_pusher.py's."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pg8000.native
import pytest

from energy_worker.adapters.sql import ingest, installation
from energy_worker.adapters.sql import totals as store
from energy_worker.core.domain import DeadLetter, MeterRecord, MeterState, Row, Run, at_time


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=UTC)


DAY = date(2026, 6, 10)
NOW = utc(11, 1)


def pulse_row(pulses: int, kwh: str, at: datetime, typed_in: bool = False) -> Row:
    return Row(1, None if typed_in else 1500, pulses, Decimal(kwh), None, -1, at, pulses=pulses,
               typed_in=typed_in)  # fmt: skip


# Meter 1 (1000 pulses/kWh): 300 pulses from 10:00 to 11:00, where 50 kWh is typed in (the
# reading at 11:00 is that row's), then 600 pulses by 11:45. The others have no history.
HISTORY = {
    1: pulse_row(50, "0.05", utc(9, 23)),
    2: pulse_row(100, "0.1", utc(10, 10)),
    3: pulse_row(400, "0.4", utc(10, 10, 30)),
    4: pulse_row(400, "50", utc(10, 11), typed_in=True),
    5: pulse_row(1000, "50.6", utc(10, 11, 45)),
}
HOURS = [(utc(10, 10), utc(10, 11), DAY), (utc(10, 11), utc(10, 12), DAY)]


@pytest.fixture
def history(sql: pg8000.native.Connection) -> pg8000.native.Connection:
    ingest.insert_rows(sql, HISTORY)
    latest = MeterRecord(MeterState(1000, None, -1, 0), Run(1500, 4, 5), counted=1000)
    ingest.save_status(sql, {1: latest}, {1: Decimal("50.6")})
    return sql


def totals_of(sql: pg8000.native.Connection, table: str, key: str) -> list[list[object]]:
    return sql.run(
        f"""SELECT {key}, kWh_start, kWh, kWh_diff, kWh_set FROM {table}
            WHERE meter_no = 1 ORDER BY {key}"""
    )


def test_hours_count_pulses_and_what_a_typed_in_reading_set(history: pg8000.native.Connection):
    assert store.upsert_hours(history, HOURS, NOW) == 2 * 7  # every configured meter
    assert totals_of(history, "meter_hourly_totals", "hour_start") == [
        [utc(10, 10), Decimal("0.1"), Decimal("50"), Decimal("0.3"), Decimal("49.6")],
        [utc(10, 11), Decimal("50"), Decimal("50.6"), Decimal("0.6"), Decimal("0.0")],
    ]
    ((no_history,),) = history.run(
        "SELECT count(*) FROM meter_hourly_totals WHERE meter_no <> 1 AND kWh IS NULL"
    )
    assert no_history == 12
    assert store.upsert_hours(history, HOURS, NOW + timedelta(hours=1)) == 0  # nothing changed
    ingest.insert_rows(history, {6: pulse_row(1100, "50.7", utc(10, 11, 50))})
    assert store.upsert_hours(history, HOURS, NOW) == 1  # the one hour it changed
    assert totals_of(history, "meter_hourly_totals", "hour_start")[1][2:4] == [
        Decimal("50.7"),
        Decimal("0.7"),
    ]
    assert store.upsert_hours(history, [], NOW) == 0


def test_a_day_starts_at_the_reading_before_it(history: pg8000.native.Connection):
    days = [(DAY, utc(10, 0), utc(11, 0))]
    assert store.upsert_days(history, days, NOW) == 7
    assert totals_of(history, "meter_daily_totals", "day") == [
        [DAY, Decimal("0.05"), Decimal("50.6"), Decimal("0.95"), Decimal("49.6")]
    ]
    assert store.upsert_days(history, days, NOW) == 0
    assert store.upsert_days(history, [], NOW) == 0


def test_readings_at_an_instant_and_now(history: pg8000.native.Connection):
    at_11 = store.readings_at(history, utc(10, 11))
    assert at_11[0] == (1, "Meter 1", Decimal("50")) and len(at_11) == 7
    assert all(kwh is None for _no, _name, kwh in at_11[1:])
    assert store.readings_at(history, utc(10, 10, 59))[0][2] == Decimal("0.4")
    now = store.current_readings(history)
    assert now[0] == (1, "Meter 1", Decimal("50.6")) and now[1] == (2, "Meter 2", Decimal(0))


def test_what_changed_since_a_pass(history: pg8000.native.Connection):
    assert store.first_history(history) == utc(9, 23)
    # the run's second row (5) is the one the processor may still move
    assert store.history_changes(history, 0) == (utc(9, 23), 5, [utc(10, 11, 45)])
    assert store.history_changes(history, 3) == (utc(10, 11), 5, [utc(10, 11, 45)])
    assert store.history_changes(history, 5) == (None, 5, [utc(10, 11, 45)])
    assert store.history_changes(history, 9) == (None, 9, [utc(10, 11, 45)])


def test_the_pushers_state_round_trips(sql: pg8000.native.Connection):
    assert store.load_state(sql) == store.PusherState(None, None, 0, None, None)
    store.start_state(sql, "Europe/Copenhagen", DAY)
    store.save_totals_state(sql, 42, utc(10, 11), utc(10, 12))
    assert store.load_state(sql) == store.PusherState(
        "Europe/Copenhagen", DAY, 42, utc(10, 11), utc(10, 12)
    )
    store.set_next_push_day(sql, date(2026, 6, 12))
    # a new zone forgets every total, but not the day the next push is due
    store.start_state(sql, "UTC", DAY)
    assert store.load_state(sql) == store.PusherState("UTC", date(2026, 6, 12), 0, None, None)
    sql.run("DELETE FROM pusher_state")  # by hand: recreated, not an error
    assert store.load_state(sql) == store.PusherState(None, None, 0, None, None)
    assert sql.run("SELECT count(*) FROM pusher_state") == [[1]]


def test_a_push_is_recorded_once_and_sent_oldest_first(sql: pg8000.native.Connection):
    meters = [(2, "null"), (1, 'a,"b"\\')]  # names as text, whatever they hold
    assert store.record_push(sql, "daily:2026-06-10", utc(11, 0), "1.5,2.5", NOW, DAY, meters)
    assert not store.record_push(sql, "daily:2026-06-10", utc(11, 0), "9,9", NOW, DAY, meters)
    assert store.record_push(sql, "daily:2026-06-09", utc(10, 0), "1,2", NOW)
    first = store.next_pending(sql)
    assert first is not None
    assert (first.dedup_key, first.data_string, first.day, first.meters) == (
        "daily:2026-06-09", "1,2", None, None)  # fmt: skip
    assert first.push_id == f"{installation.installation_id(sql)}:daily:2026-06-09"
    store.mark_failed(sql, first.id, 503, "unavailable", NOW + timedelta(minutes=5))
    again = store.next_pending(sql)
    assert again is not None and again.id == first.id
    assert (again.attempts, again.next_attempt_at) == (1, NOW + timedelta(minutes=5))
    store.mark_sent(sql, first.id, 200, NOW)
    second = store.next_pending(sql)
    assert second is not None
    assert (second.dedup_key, second.data_string, second.day, second.meters) == (
        "daily:2026-06-10", "1.5,2.5", DAY, meters)  # fmt: skip
    store.mark_sent(sql, second.id, 200, NOW)
    assert store.next_pending(sql) is None


def test_requests_waiting_are_one_push_of_the_newest_readings(sql: pg8000.native.Connection):
    assert store.record_request(sql, "request:a", utc(10, 12), "1,1", DAY, [(1, "Meter 1")])
    first = store.next_pending(sql)
    assert first is not None
    store.mark_failed(sql, first.id, None, "timed out", NOW)
    assert store.record_request(sql, "request:b", utc(10, 13), "2,2", DAY, [(1, "Meter 1")])
    assert not store.record_request(sql, "request:b", utc(10, 14), "3,3")  # recorded before
    joined = store.next_pending(sql)
    assert joined is not None
    assert (joined.dedup_key, joined.data_string, joined.attempts) == ("request:b", "2,2", 1)
    assert joined.id > first.id  # found as one after the first request's
    assert sql.run("SELECT count(*) FROM push_outbox") == [[1]]
    store.mark_sent(sql, joined.id, 200, NOW)
    assert store.record_request(sql, "request:c", utc(10, 15), "4,4")
    assert sql.run("SELECT count(*) FROM push_outbox") == [[2]]  # nothing waits: a new one


def test_old_dead_letters_are_pruned_newest_kept(sql: pg8000.native.Connection):
    letters = [DeadLetter(at_time(n), f"key{n}", "v", "r") for n in range(5)]
    ingest.insert_dead_letters(sql, letters)
    assert store.prune_dead_letters(sql, keep=2) == 3
    assert sql.run("SELECT key FROM dead_letters ORDER BY id") == [["key3"], ["key4"]]
    assert store.prune_dead_letters(sql, keep=2) == 0
