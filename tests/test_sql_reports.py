"""What the `energy-worker` command reads (services/energy_worker/adapters/sql/reports.py), from a
small history written by the processor's own SQL (adapters/sql/ingest.py): pulses since an
instant across a typed-in reading, energy per local day and hour, the meters' rows, and the
outbox's summary. The command's output is tests/test_cli.py's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pg8000.native
import pytest

from energy_worker.adapters.sql import ingest, reports
from energy_worker.adapters.sql import totals as pusher_store
from energy_worker.core import totals
from energy_worker.core.domain import MeterRecord, MeterState, Row, Run, ms_since_1970

CPH = totals.zone("Europe/Copenhagen")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=CPH)  # type: ignore[arg-type,misc]


# Meter 1 (1000 pulses/kWh): 100 pulses before the day, 300 by 06:00, a reading of 500 kWh typed
# in at noon, 1200 more pulses by 20:00. Meter 2: only a typed-in reading. Meter 3: no history.
HISTORY = {
    1: Row(1, 1500, 100, Decimal("0.1"), 1000, 2400, local(2026, 6, 9, 22), pulses=100),
    2: Row(1, 1400, 400, Decimal("0.4"), 9000, 2500, local(2026, 6, 10, 6), pulses=400),
    3: Row(1, None, 400, Decimal("500.000"), None, -1, local(2026, 6, 10, 12), pulses=400,
           typed_in=True),
    4: Row(1, 1600, 1600, Decimal("501.2"), 20000, 2300, local(2026, 6, 10, 20), pulses=1600),
    5: Row(2, None, 0, Decimal("42"), None, -1, local(2026, 6, 10, 10), pulses=0, typed_in=True),
}  # fmt: skip


@pytest.fixture
def day(sql: pg8000.native.Connection) -> pg8000.native.Connection:
    ingest.insert_rows(sql, HISTORY)
    latest_1, latest_2 = HISTORY[4], HISTORY[5]
    ingest.save_status(
        sql,
        {
            1: MeterRecord(MeterState(1600, 20000, 2300, ms_since_1970(latest_1.at)),
                           Run(1600, 4, None, ms_since_1970(latest_1.at)), counted=1600),
            2: MeterRecord(MeterState(0, None, -1, ms_since_1970(latest_2.at)),
                           Run(None, 5, None, ms_since_1970(latest_2.at)), counted=0),
        },
        {1: Decimal("501.2"), 2: Decimal("42")},
    )  # fmt: skip
    return sql


def test_pulses_since_an_instant_count_across_a_typed_in_reading(day: pg8000.native.Connection):
    since = reports.pulses_since
    assert since(day, [1, 2, 3], local(2026, 6, 10)) == {1: 1500, 2: 0, 3: 0}
    assert since(day, [1], local(2026, 6, 10, 13)) == {1: 1200}  # after the typed-in reading
    assert since(day, [1], local(2026, 6, 10, 12)) == {1: 1200}  # at it: its row counts
    assert since(day, [1], local(2026, 6, 1)) == {1: 1600}  # before the history: all of it
    assert since(day, [1], local(2026, 6, 10, 21)) == {1: 0}
    assert since(day, [99], local(2026, 6, 10)) == {}  # not a meter


def test_energy_per_local_day_and_hour_is_the_pulses_alone(day: pg8000.native.Connection):
    # One test: a session's first calculation in a zone costs PostgreSQL a few tenths of a second.
    reports.use_zone(day, "Europe/Copenhagen")
    got = reports.energy_per_period(day, local(2026, 6, 10), local(2026, 6, 11), "day")
    assert got == [
        reports.PeriodEnergy(local(2026, 6, 10), local(2026, 6, 11), 1, Decimal("1.5")),
        reports.PeriodEnergy(local(2026, 6, 10), local(2026, 6, 11), 2, Decimal("0")),
    ]  # meter 3, without history, has no row
    hours = reports.energy_per_period(day, local(2026, 6, 10, 5), local(2026, 6, 10, 7), "hour")
    assert [(p.start, p.meter_no, p.kwh) for p in hours if p.meter_no == 1] == [
        (local(2026, 6, 10, 5), 1, Decimal("0.3")),  # the row at 06:00 ends this hour
        (local(2026, 6, 10, 6), 1, Decimal("0")),
    ]
    first = reports.energy_per_period(day, local(2026, 6, 9), local(2026, 6, 10), "day")
    assert [(p.meter_no, p.kwh) for p in first] == [(1, Decimal("0"))]  # from its first row


def test_the_days_are_the_zones(day: pg8000.native.Connection):
    reports.use_zone(day, "UTC")
    got = reports.energy_per_period(
        day, datetime(2026, 6, 10, tzinfo=UTC), datetime(2026, 6, 11, tzinfo=UTC), "day"
    )
    assert {p.start for p in got} == {datetime(2026, 6, 10, tzinfo=UTC)}
    assert {p.end for p in got} == {datetime(2026, 6, 11, tzinfo=UTC)}  # not 22:00 UTC


def test_first_pulses_only_of_a_history_that_begins_with_one(day: pg8000.native.Connection):
    assert reports.first_pulses(day, [1, 2, 3]) == {1: local(2026, 6, 9, 22)}


def test_meters_rows_skip_a_typed_in_reading_as_their_last_pulse(day: pg8000.native.Connection):
    one, two = reports.meters(day, [2, 1, 99])
    assert one == reports.MeterRow(1, "Meter 1", 1000, 17250, Decimal("501.2"), 1600, 1600,
                                   local(2026, 6, 10, 20), 1600)  # fmt: skip
    assert (two.meter_no, two.kwh, two.last_pulse, two.last_watt) == (2, Decimal(42), None, None)


def test_readings_and_typed_in_rows(day: pg8000.native.Connection):
    assert reports.reading(day, 1) == (Decimal("501.2"), 1600)
    assert reports.reading(day, 99) is None
    assert reports.last_index(day) == 5
    assert reports.typed_in_after(day, 1, 2) == Decimal("500.000")
    assert reports.typed_in_after(day, 1, 3) is None
    assert reports.typed_in_after(day, 2, 0) == Decimal(42)


def test_silent_after_and_progress_as_the_schema_leaves_them(sql: pg8000.native.Connection):
    assert reports.silent_after(sql) == 3600.0
    progress = reports.progress(sql)
    assert progress is not None and (progress.backlog, progress.last_seq) == (0, 0)
    assert abs(progress.updated_at - reports.clock(sql)) < timedelta(minutes=5)
    ingest.save_progress(sql, "e1", 42, 7)
    after = reports.progress(sql)
    assert after is not None and (after.backlog, after.last_seq) == (7, 42)


def test_pushes_pending_sent_and_the_head(sql: pg8000.native.Connection):
    assert reports.pushes(sql) == reports.Pushes(None, 0, None, None)
    now = reports.clock(sql)
    for n, key in enumerate(["daily:2026-06-09", "daily:2026-06-10", "request:r1"]):
        pusher_store.record_push(sql, key, local(2026, 6, 10 + n), f"{n},1", now)
    head = reports.pushes(sql).head
    assert head is not None and head.dedup_key == "daily:2026-06-09"
    pusher_store.mark_failed(sql, head.id, 500, "server error", now + timedelta(minutes=1))
    pusher_store.mark_sent(sql, head.id + 1, 200, now)
    summary = reports.pushes(sql)
    assert summary.pending == 2 and summary.failing_since == now
    assert summary.last_sent is not None and summary.last_sent.dedup_key == "daily:2026-06-10"
    assert summary.head is not None and summary.head.last_error == "server error"
    request = reports.request_after(sql, 0)
    assert request is not None and request.dedup_key == "request:r1"
    assert reports.request_after(sql, request.id) is None
    assert reports.pending_before(sql, request) == (1, summary.head)
    assert reports.last_push_id(sql) == request.id
