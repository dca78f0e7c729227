"""sql/schema.sql: idempotent, and migrates a database of the original stack without loss."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal

from energy_worker import config, db, schema
from energy_worker.domain import Meter
from energy_worker.store import processor as store


def test_applying_twice_changes_nothing_and_keeps_counts(sql):
    sql.run("UPDATE meter_status SET meter_counts = 12345, kWh = 12.345 WHERE meter_no = 1")
    meters = config.load_meters()
    renamed = {**meters, 1: Meter(1, "Kitchen", 1000, 9000, Decimal("2.5"))}
    assert schema.apply(sql, renamed) == schema.apply(sql, renamed)
    ((counts, kwh, name, dev),) = sql.run(
        "SELECT s.meter_counts, s.kWh, m.meter_name, m.deviation_pct FROM meter_status s "
        "JOIN meter_metadata m USING (meter_no) WHERE meter_no = 1"
    )
    assert (counts, kwh, name, dev) == (12345, Decimal("12.345"), "Kitchen", Decimal("2.5"))


def test_a_database_of_the_original_stack_is_widened_in_place(pg_server, fresh_pg):
    """The original's tables, as its dashboards read them, with SMALLINT watts and a float kWh."""
    con = db.connect(fresh_pg, "test")
    con.execute_simple(
        "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
        "CREATE TABLE meter_metadata (meter_no smallint, meter_name varchar(50),"
        "  pulse_per_kWh smallint, max_energy smallint, power_factor real, deviation_pct real);"
        "CREATE TABLE meter_status (upper_index integer, meter_no smallint,"
        "  reference_watt_consumption smallint, meter_counts integer, kWh real,"
        "  pulse_time_stamp bigint, pulse_period integer, cor_time_stamp timestamp,"
        "  time_stamp timestamp);"
        "CREATE TABLE consumption (index serial PRIMARY KEY, meter_no smallint,"
        "  watt_consumption smallint, meter_counts integer, kWh real, pulse_time_stamp bigint,"
        "  pulse_period integer, cor_time_stamp timestamp, time_stamp timestamp);"
        "INSERT INTO meter_metadata VALUES (1, 'Main', 1000, 17250, 1, 5);"
        "INSERT INTO meter_status VALUES (2, 1, 2000, 279970, 279.97, 5000, 1800, now(), now());"
        "INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kWh, pulse_time_stamp,"
        "  pulse_period, cor_time_stamp, time_stamp)"
        "  VALUES (1, 2000, 279969, 279.969, 3200, 1800, now(), now()),"
        "         (1, 2000, 279970, 279.97, 5000, 1800, now(), now());"
    )
    version = schema.apply(con, config.load_meters())
    assert version >= 1
    types = dict(
        con.run(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'consumption' AND column_name IN ('watt_consumption', 'kwh')"
        )
    )
    assert types == {"watt_consumption": "bigint", "kwh": "numeric"}
    assert con.run("SELECT count(*) FROM consumption")[0][0] == 2
    records = store.load_status(con)
    assert records[1].state.counts == 279970  # kept
    assert records[1].run is None  # the next pulse starts a run of ours
    assert con.run("SELECT upper_index FROM meter_status WHERE meter_no = 1")[0][0] == 2
    con.run(
        "INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kWh, "
        "cor_time_stamp) VALUES (1, 40000, 1, 0.001, now())"
    )  # > SMALLINT: fits now
    assert len(store.load_status(con)) == 7  # the other configured meters were added
    con.close()


def test_a_grafana_role_problem_does_not_stop_the_set_up(worker_env, pg):
    """Grafana's login is Grafana's business: the pulse path must start regardless."""
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.setup"],
        env={**worker_env, "GRAFANA_DB_USER": pg.user, "GRAFANA_DB_PASSWORD": "pw%$'\""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Grafana's read-only role was not set up" in done.stderr
    assert "ready: schema version" in done.stderr
    assert "pw%$" not in done.stderr


def test_the_installation_id_is_made_once(sql):
    """The publisher's entities in Home Assistant derive from it: it must never change."""
    ((first,),) = sql.run("SELECT id FROM installation")
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert schema.apply(sql, config.load_meters()) >= 5
    assert sql.run("SELECT id FROM installation") == [[first]]
