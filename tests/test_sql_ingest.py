"""The processor's SQL (services/energy_worker/adapters/sql/ingest.py), against the test's
database: history rows written and moved, each meter's state saved and loaded back (through the
view meter_status), the exactly-once bookkeeping, dead letters and the backlog. allocate_indexes
is left to its own change; the rows here take indexes of their own."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pg8000.native

from energy_worker.adapters.sql import ingest as store
from energy_worker.core import history
from energy_worker.core.domain import DeadLetter, MeterRecord, MeterState, Row, Run, at_time

# The start of a quarter hour (history.slot), in ms since 1970.
T0 = (1_795_000_000_000 // history.SLOT_MS) * history.SLOT_MS
ROW_COLUMNS = """index, meter_no, watt_consumption, meter_counts, kWh, pulse_time_stamp,
                 pulse_period, cor_time_stamp, typed_in, pulses"""


def row(meter: int, counts: int, at_ms: int, watt: int | None = 1500, **fields: object) -> Row:
    """A pulse's row of a 1000 pulses/kWh meter, `counts` pulses counted."""
    values: dict[str, object] = dict(
        meter_no=meter, watt=watt, counts=counts, kwh=Decimal(counts) / 1000,
        millis=at_ms - T0 + 10_000, period=2400, at=at_time(at_ms), pulses=counts,
    )  # fmt: skip
    return Row(**(values | fields))  # type: ignore[arg-type]


def stored(sql: pg8000.native.Connection, index: int) -> list[object]:
    (found,) = sql.run(f"SELECT {ROW_COLUMNS} FROM consumption WHERE index = :i", i=index)
    return list(found)


def as_stored(index: int, r: Row) -> list[object]:
    return [index, r.meter_no, r.watt, r.counts, r.kwh, r.millis, r.period, r.at, r.typed_in,
            r.pulses]  # fmt: skip


# --- the history ---------------------------------------------------------------------------------


def test_inserted_rows_read_back_exactly(sql: pg8000.native.Connection):
    rows = {
        101: row(1, 10, T0 + 1000),
        102: row(1, 11, T0 + 3400, watt=None),  # no power reading
        103: row(2, 0, T0 + 5000, watt=None, kwh=Decimal("12345.670"), millis=None, period=-1,
                 typed_in=True),  # a typed-in reading: its scale kept
        104: row(3, 2**40, T0 + 7000, watt=2**40),  # beyond 32 bits
    }  # fmt: skip
    store.insert_rows(sql, rows)
    for index, r in rows.items():
        assert stored(sql, index) == as_stored(index, r)
    (kwh_text,) = sql.run("SELECT kWh::text FROM consumption WHERE index = 103")[0]
    assert kwh_text == "12345.670"
    store.insert_rows(sql, {})  # nothing to write: no statement, no error


def test_a_moved_row_holds_its_latest_pulse_and_no_other_row_moves(sql: pg8000.native.Connection):
    first, moving, other = row(1, 10, T0 + 1000), row(1, 11, T0 + 3400), row(2, 11, T0 + 3400)
    store.insert_rows(sql, {1: first, 2: moving, 3: other})
    later = row(1, 14, T0 + 600_000, watt=1480)
    store.update_rows(sql, {2: later})
    assert stored(sql, 2) == as_stored(2, later)
    assert stored(sql, 1) == as_stored(1, first)
    assert stored(sql, 3) == as_stored(3, other)


def test_a_row_moves_to_a_pulse_on_the_quarter_hours_last_instant(sql: pg8000.native.Connection):
    # A pulse exactly at the boundary belongs to the quarter hour that ends there (history.slot).
    store.insert_rows(sql, {7: row(4, 1, T0 + 1)})
    at_end = row(4, 5, T0 + history.SLOT_MS)
    store.update_rows(sql, {7: at_end})
    assert stored(sql, 7) == as_stored(7, at_end)
    store.update_rows(sql, {})


def test_moving_a_row_stamps_when_it_changed(sql: pg8000.native.Connection):
    store.insert_rows(sql, {5: row(1, 1, T0 + 1000)})
    sql.run("UPDATE consumption SET time_stamp = now() - interval '1 day' WHERE index = 5")
    store.update_rows(sql, {5: row(1, 2, T0 + 2000)})
    ((age,),) = sql.run("SELECT now() - time_stamp FROM consumption WHERE index = 5")
    assert age < timedelta(minutes=1)


# --- each meter's state --------------------------------------------------------------------------


def test_saved_state_loads_back_as_the_same_records(sql: pg8000.native.Connection):
    store.insert_rows(sql, {1: row(1, 10, T0 + 1000), 2: row(1, 12, T0 + 61_000),
                            3: row(2, 4, T0 + 2000)})  # fmt: skip
    records = {
        1: MeterRecord(MeterState(12, 71_000, 2400, T0 + 61_000), Run(1500, 1, 2, T0 + 61_000),
                       counted=12, repeated=3, over_max=4),
        2: MeterRecord(MeterState(4, 12_000, -1, T0 + 2000), Run(None, 3, None, T0 + 2000),
                       counted=4),
    }  # fmt: skip
    store.save_status(sql, records, {1: Decimal("0.012"), 2: Decimal("0.0040")})
    loaded = store.load_status(sql)
    assert loaded[1] == records[1] and loaded[2] == records[2]
    assert loaded[3] == MeterRecord(MeterState(0, None, -1, None), None)  # never pulsed
    assert set(loaded) == set(range(1, 8))
    kwh = dict(sql.run("SELECT meter_no, kWh::text FROM meter_status WHERE meter_no IN (1, 2)"))
    assert kwh == {1: "0.012", 2: "0.0040"}  # exact, scale kept
    store.save_status(sql, {}, {})


def test_a_row_moved_after_the_state_was_saved_is_what_loads(sql: pg8000.native.Connection):
    """The view shows the meter's latest row where it counted more than the stored state: a
    commit that only moved that row (core/status.py) loads as if the state had been saved."""
    store.insert_rows(sql, {1: row(1, 10, T0 + 1000), 2: row(1, 12, T0 + 61_000)})
    saved = MeterRecord(MeterState(12, 71_000, 2400, T0 + 61_000), Run(1500, 1, 2, T0 + 61_000),
                        counted=12, repeated=1)  # fmt: skip
    store.save_status(sql, {1: saved}, {1: Decimal("0.012")})
    store.update_rows(sql, {2: row(1, 13, T0 + 63_400)})
    moved = MeterRecord(MeterState(13, 73_400, 2400, T0 + 63_400), Run(1500, 1, 2, T0 + 63_400),
                        counted=13, repeated=1)  # fmt: skip
    assert store.load_status(sql)[1] == moved
    ((kwh,),) = sql.run("SELECT kWh FROM meter_status WHERE meter_no = 1")
    assert kwh == Decimal("0.013")


def test_a_power_up_saves_a_state_without_a_run(sql: pg8000.native.Connection):
    store.insert_rows(sql, {1: row(1, 10, T0 + 1000)})
    store.save_status(sql, {1: MeterRecord(MeterState(10, 11_000, 2400, T0 + 1000),
                                           Run(1500, 1, None, T0 + 1000), counted=10)},
                      {1: Decimal("0.01")})  # fmt: skip
    after = MeterRecord(MeterState(10, None, -1, T0 + 1000), None, counted=10)
    store.save_status(sql, {1: after}, {1: Decimal("0.01")})
    assert store.load_status(sql)[1] == after


# --- exactly-once bookkeeping --------------------------------------------------------------------


def test_done_per_epoch_round_trips_and_the_progress_counts_too(sql: pg8000.native.Connection):
    assert store.load_done(sql) == {}
    assert store.load_progress_epoch(sql) == ""
    store.save_done(sql, {"e1.a": 5, "e2:b": 2**62})
    assert store.load_done(sql) == {"e1.a": 5, "e2:b": 2**62}
    store.save_done(sql, {"e1.a": 9})  # a later commit of the same epoch replaces its number
    assert store.load_done(sql) == {"e1.a": 9, "e2:b": 2**62}
    store.save_progress(sql, "e3", 12, backlog=4)
    assert store.load_progress_epoch(sql) == "e3"
    assert store.load_done(sql) == {"e1.a": 9, "e2:b": 2**62, "e3": 12}
    store.save_done(sql, {"e3": 10})  # the higher of the two is what is done
    assert store.load_done(sql)["e3"] == 12
    store.save_done(sql, {})


# --- dead letters and the backlog ----------------------------------------------------------------


def test_dead_letters_with_hostile_text_are_stored_printable(sql: pg8000.native.Connection):
    hostile = DeadLetter(at_time(T0), "chan\x00nel:1\ud800", "\u00e6" * 1000, 'a "reason"\n\\')
    plain = DeadLetter(at_time(T0 + 1), "null", "NULL", "{a,b}")  # text, never SQL's NULL
    store.insert_dead_letters(sql, [hostile, plain])
    rows = sql.run("SELECT at, key, value, reason FROM dead_letters ORDER BY id")
    assert rows == [
        [at_time(T0), "chan\\x00nel:1\\xed\\xa0\\x80", "\\xc3\\xa6" * 800, 'a "reason"\\x0a\\'],
        [at_time(T0 + 1), "null", "NULL", "{a,b}"],
    ]
    store.insert_dead_letters(sql, [])
    assert sql.run("SELECT count(*) FROM dead_letters") == [[2]]


def test_the_backlog_saved_alone_moves_updated_at_and_saved_waiting_does_not(
    sql: pg8000.native.Connection,
):
    sql.run("UPDATE worker_progress SET updated_at = now() - interval '1 hour' WHERE id = 1")
    ((before,),) = sql.run("SELECT updated_at FROM worker_progress")
    store.save_waiting(sql, 40)
    assert sql.run("SELECT backlog, updated_at FROM worker_progress") == [[40, before]]
    store.save_backlog(sql, 41)
    ((backlog, updated_at),) = sql.run("SELECT backlog, updated_at FROM worker_progress")
    assert backlog == 41 and updated_at > before + timedelta(minutes=59)
    sql.run("UPDATE worker_progress SET updated_at = now() - interval '1 hour' WHERE id = 1")
    store.save_backlog(sql, 41)  # unchanged: nothing written, the last commit's time stays
    ((still,),) = sql.run("SELECT now() - updated_at FROM worker_progress")
    assert still > timedelta(minutes=59)
