"""The meter config in PostgreSQL (services/energy_worker/adapters/sql/meters.py), against the
test's database (the default meters of services/energy_worker/meters.toml applied): what
upsert_meters writes load_meters reads back, a change follows the file and never touches a
count, and the silent-meter threshold. Hostile names are tests/test_hostile_input.py's."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pg8000.native

from energy_worker.adapters import config
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.adapters.sql import reports
from energy_worker.core.domain import Meter
from helpers import REPO

DEFAULTS = config.load_meters(REPO / "services" / "energy_worker" / "meters.toml")


def test_the_applied_config_reads_back_as_the_same_meters(sql: pg8000.native.Connection):
    assert meter_store.load_meters(sql) == DEFAULTS


def test_upserted_meters_read_back_exactly(sql: pg8000.native.Connection):
    meters = {
        8: Meter(8, "Heat pump 'north'", 800, 9000, Decimal("2.5"), Decimal("0.95")),
        9: Meter(9, "null", 2000, 100, Decimal("0.001"), Decimal("1.000")),  # text, not NULL
        10: Meter(10, 'back\\slash "quoted" {a,b} \u00e6\U0001f600', 100, 1, Decimal(0)),
    }
    meter_store.upsert_meters(sql, meters)
    loaded = meter_store.load_meters(sql)
    assert {no: loaded[no] for no in meters} == meters
    assert str(loaded[9].power_factor) == "1.000"  # the decimal's text as given, not a float's
    assert str(loaded[8].deviation_pct) == "2.5"
    assert {no: loaded[no] for no in DEFAULTS} == DEFAULTS  # the others as they were


def test_a_changed_meter_follows_the_file_and_keeps_its_counts(sql: pg8000.native.Connection):
    sql.run(
        """UPDATE meter_status_stored SET meter_counts = 1234, kWh = 1.234, pulses_counted = 99
           WHERE meter_no = 1"""
    )
    renamed = replace(
        DEFAULTS[1], name="Kitchen", pulses_per_kwh=2000, max_power_w=11000,
        deviation_pct=Decimal("7.5"), power_factor=Decimal("0.9"),
    )  # fmt: skip
    meter_store.upsert_meters(sql, {1: renamed})
    assert meter_store.load_meters(sql)[1] == renamed
    assert sql.run(
        "SELECT meter_counts, kWh, pulses_counted FROM meter_status WHERE meter_no = 1"
    ) == [[1234, Decimal("1.234"), 99]]
    assert len(meter_store.load_meters(sql)) == len(DEFAULTS)  # an update, not a new meter


def test_a_new_meter_gets_a_fresh_state_row_and_an_existing_one_keeps_its_own(
    sql: pg8000.native.Connection,
):
    sql.run("UPDATE meter_status_stored SET meter_counts = 5 WHERE meter_no = 2")
    meter_store.upsert_meters(sql, {2: DEFAULTS[2], 8: Meter(8, "new", 1000, 17250, Decimal(5))})
    rows = sql.run(
        """SELECT meter_no, meter_counts, kWh, pulse_period, pulses_counted, run_index
           FROM meter_status_stored WHERE meter_no IN (2, 8) ORDER BY meter_no"""
    )
    assert rows == [[2, 5, Decimal(0), -1, 0, None], [8, 0, Decimal(0), -1, 0, None]]


def test_upserting_the_same_config_twice_changes_nothing(sql: pg8000.native.Connection):
    meter_store.upsert_meters(sql, DEFAULTS)
    meter_store.upsert_meters(sql, DEFAULTS)
    assert meter_store.load_meters(sql) == DEFAULTS
    assert sql.run("SELECT count(*) FROM meter_status_stored") == [[len(DEFAULTS)]]


def test_silent_after_is_written_and_read(sql: pg8000.native.Connection):
    assert reports.silent_after(sql) == 3600.0  # the schema's default
    meter_store.set_silent_after(sql, 900)
    assert reports.silent_after(sql) == 900.0
    meter_store.set_silent_after(sql, 86_400)  # written again: replaced, not a second row
    assert reports.silent_after(sql) == 86_400.0
    assert sql.run("SELECT count(*) FROM worker_settings WHERE name = 'meter_silent_after_s'") == [
        [1]
    ]
