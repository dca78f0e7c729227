"""The schema has one owner: the set-up runs each numbered migration once, under a lock, and
brings a database of any earlier version (tests/schema_history/) to what a fresh one is; the
programs only check the version, and wait with one line while it is not theirs."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from energy_worker.adapters import config, postgres, schema
from energy_worker.adapters.sql import ingest as store
from helpers import enqueue, pulses, status, wait_until
from schema_support import ORIGINAL_TABLES, VERSIONS, catalog, differences, make_as_shipped

# Every shipped migration, pinned: a database that ran one never runs it again, so an edit
# would reach new databases only. A new file gets its line here once it ships.
SHIPPED = {
    "0010_baseline.sql": "fd8f39aa0d1f2c53c886362cb2ebf431bae8d62798d03b080743e0c3bccef969",
}


def test_no_shipped_migration_is_edited():
    found = {path.name: path for _, path in schema.migrations()}
    assert set(SHIPPED) <= set(found), "a shipped migration is gone"
    for name, digest in SHIPPED.items():
        actual = hashlib.sha256(found[name].read_bytes()).hexdigest()
        assert actual == digest, f"{name} has shipped: add a new migration instead of editing it"
    assert schema.latest() == max(number for number, _ in schema.migrations())


# --- databases of every earlier version ------------------------------------------------------

# What an upgraded database keeps that a fresh one has not, by version: versions 2 and 3 had a
# meter_totals table of their own (a row per meter and day; version 4 renamed it in the file to
# meter_daily_totals). The baseline takes any table of that name for the original stack's and
# leaves it be, so it stays, and the view of that name is not made.
KNOWN: dict[int, dict[str, set[str]]] = {
    version: {
        "relations": {"meter_totals"},
        "columns": {"meter_totals"},
        "constraints": {"meter_totals"},
        "indexes": {"meter_totals_day_end", "meter_totals_pkey"},
        "views": {"meter_totals"},
    }
    for version in (2, 3)
}

READERS = [
    "SELECT index, meter_no, watt_consumption, meter_counts, kwh, pulse_time_stamp,"
    "  pulse_period, cor_time_stamp FROM consumption ORDER BY index",
    "SELECT meter_no, upper_index, meter_counts, kwh, pulse_time_stamp, cor_time_stamp"
    "  FROM meter_status ORDER BY meter_no",
    "SELECT meter_no, meter_name, pulse_per_kwh, max_energy FROM meter_metadata ORDER BY 1",
    "SELECT epoch, last_seq FROM worker_progress",
]


def named(found: dict[str, dict[str, list[object]]]) -> dict[str, set[str]]:
    """The objects that differ, by name (the first column of each catalog row)."""
    return {
        part: {str(row[0]) for side in sides.values() for row in side}  # type: ignore[index]
        for part, sides in found.items()
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_a_database_of_each_earlier_version_becomes_a_fresh_one_with_its_rows(fresh_pg, version):
    con = postgres.connect(fresh_pg, "test")
    fresh = catalog(con)  # the template: an empty database the set-up made
    meters = config.load_meters()
    assert make_as_shipped(con, version, meters) == version
    pulses_column = con.run(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'consumption' AND column_name = 'pulses'"
    ) == [[1]]
    # consumption.pulses, from version 5 on: the pulses counted up to the row
    stored = "meter_status_stored" if version >= 10 else "meter_status"  # a view from 10 on
    extra, four, six = (", pulses", ", 4", ", 6") if pulses_column else ("", "", "")
    con.execute_simple(
        f"INSERT INTO consumption (index, meter_no, watt_consumption, meter_counts, kWh,"
        f"  pulse_time_stamp, pulse_period, cor_time_stamp{extra})"
        f"  VALUES (1, 1, NULL, 4, 0.004, 1000, -1, '2024-06-01 10:00+00'{four}),"
        f"         (2, 1, 2000, 6, 0.006, 4600, 1800, '2024-06-01 10:00:04+00'{six});"
        f"UPDATE {stored} SET upper_index = 2, meter_counts = 6, kWh = 0.006,"
        "  pulse_time_stamp = 4600, pulse_period = 1800, cor_time_stamp = '2024-06-01 10:00:04+00'"
        "  WHERE meter_no = 1;"
        "UPDATE worker_progress SET epoch = 'e1', last_seq = 41;"
    )
    before = [con.run(q) for q in READERS]

    assert schema.apply(con, meters) == schema.latest()
    assert schema.check(con) == schema.latest()
    assert named(differences(catalog(con), fresh)) == KNOWN.get(version, {})
    assert [con.run(q) for q in READERS] == before
    assert store.load_status(con)[1].state.counts == 6
    assert store.load_done(con).get("e1") == 41
    con.close()


def test_a_database_of_the_original_stack_differs_only_where_it_keeps_its_own(fresh_pg):
    """The original's four tables (test_schema.py follows its rows): after the set-up, its
    schema is a fresh one's but where the original's own definitions are kept on purpose."""
    con = postgres.connect(fresh_pg, "test")
    fresh = catalog(con)
    con.execute_simple(
        ORIGINAL_TABLES + "CREATE TABLE meter_totals (day date, kWh_1 real, kWh_diff_1 real);"
        "INSERT INTO meter_totals VALUES ('2024-06-01', 279.97, 1.5);"
    )
    assert schema.apply(con, config.load_meters()) == schema.latest()
    assert named(differences(catalog(con), fresh)) == {
        # Its own meter_totals table stays, with its rows; so the view of that name is not made.
        "relations": {"meter_totals"},
        # Only what overflowed is widened (watts, counts, kWh, the pulse constants): meter_no
        # stays smallint, the names varchar(50), the times without a zone, power_factor and
        # deviation_pct real, consumption's index an integer; and the original's columns get
        # no NOT NULL and no defaults. The views over them show the same types.
        "columns": {
            "consumption", "meter_metadata", "meter_status", "meter_status_stored", "meter_totals",
            "meter_last_pulse", "meter_overview", "meter_silence", "reading_corrections",
        },
        "sequences": {"consumption_index_seq"},  # an integer one, as its column
        # Unique indexes of the baseline's own serve the upserts, not primary keys and checks.
        "constraints": {"meter_metadata", "meter_status_stored"},
        "indexes": {"meter_metadata_pkey", "meter_status_pkey"},
        # The views cast the original's columns (its times have no zone) and meter_totals's.
        "views": {"meter_overview", "meter_silence", "meter_totals"},
    }  # fmt: skip
    assert con.run("SELECT day::text, kwh_1 FROM meter_totals") == [["2024-06-01", 279.97]]
    con.close()


# --- the runner, with migrations of a test's own ---------------------------------------------


def folder_with(tmp_path: Path, files: dict[str, str]) -> Path:
    """The shipped migrations and `files` on top, in a folder of the test's own."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for _, path in schema.migrations():
        shutil.copy(path, folder / path.name)
    for name, text in reversed(files.items()):  # written out of order: the runner sorts
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def versions(con: postgres.Connection) -> list[int]:
    return [row[0] for row in con.run("SELECT version FROM schema_version ORDER BY version")]


def test_a_new_migration_runs_once_and_in_number_order(fresh_pg, tmp_path):
    folder = folder_with(
        tmp_path,
        {
            "0011_ran.sql": "CREATE TABLE ran (id serial, name text);"
            "INSERT INTO ran (name) VALUES ('0011');",
            "0012_second.sql": "INSERT INTO ran (name) VALUES ('0012');",
            "0013_third.sql": "INSERT INTO ran (name) VALUES ('0013');",
        },
    )
    con = postgres.connect(fresh_pg, "test")
    assert schema.apply(con, config.load_meters(), folder) == 13
    assert schema.apply(con, config.load_meters(), folder) == 13  # the next set-up: nothing
    assert con.run("SELECT name FROM ran ORDER BY id") == [["0011"], ["0012"], ["0013"]]
    assert versions(con)[-4:] == [10, 11, 12, 13]
    assert schema.check(con, needed=13) == 13
    con.close()


def test_a_failing_migration_rolls_everything_back_and_is_named(fresh_pg, tmp_path):
    folder = folder_with(
        tmp_path,
        {
            "0011_fine.sql": "CREATE TABLE ran (name text);",
            "0012_broken.sql": "INSERT INTO no_such_table VALUES (1);",
        },
    )
    con = postgres.connect(fresh_pg, "test")
    con.run("UPDATE meter_metadata SET meter_name = 'before' WHERE meter_no = 1")
    with pytest.raises(schema.MigrationFailed, match=r"^migration 0012_broken\.sql: .*42P01"):
        schema.apply(con, config.load_meters(), folder)
    assert schema.version(con) == 10
    assert con.run("SELECT to_regclass('ran')") == [[None]]  # 0011 went with it
    assert con.run("SELECT meter_name FROM meter_metadata WHERE meter_no = 1") == [["before"]]
    con.close()


def test_two_set_ups_at_once_run_a_migration_once(fresh_pg, tmp_path):
    folder = folder_with(
        tmp_path,
        {"0011_once.sql": "CREATE TABLE ran (n int); INSERT INTO ran VALUES (1);"},
    )
    holder = postgres.connect(fresh_pg, "test")
    holder.run("SELECT pg_advisory_lock(hashtext(:k))", k=schema.LOCK)  # both must queue
    results: list[object] = []

    def set_up() -> None:
        con = postgres.connect(fresh_pg, "test set-up")
        try:
            results.append(schema.apply(con, config.load_meters(), folder))
        except Exception as exc:
            results.append(exc)
        finally:
            con.close()

    threads = [threading.Thread(target=set_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    waiting = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = 'test set-up'"
    )
    wait_until(lambda: holder.run(waiting) == [[2]], what="both set-ups waiting for the lock")
    holder.run("SELECT pg_advisory_unlock(hashtext(:k))", k=schema.LOCK)
    for thread in threads:
        thread.join(30)
    assert results == [11, 11]
    assert holder.run("SELECT count(*) FROM ran") == [[1]]
    holder.close()


def test_a_database_newer_than_the_migrations_is_refused_untouched(sql):
    sql.run("INSERT INTO schema_version (version) VALUES (11)")
    sql.run("UPDATE meter_metadata SET meter_name = 'before' WHERE meter_no = 1")
    with pytest.raises(postgres.WrongSchema, match="version 11, newer than this energy-worker"):
        schema.apply(sql, config.load_meters())
    assert sql.run("SELECT meter_name FROM meter_metadata WHERE meter_no = 1") == [["before"]]


def test_the_set_up_refuses_a_newer_database_in_one_line(worker_env, sql):
    sql.run("INSERT INTO schema_version (version) VALUES (11)")
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.programs.set_up"],
        env=worker_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert (
        len(errors) == 1 and "schema is version 11, newer than this energy-worker (10)" in errors[0]
    )


# --- the programs only check -----------------------------------------------------------------


def test_check_says_too_old_too_new_or_the_version(sql):
    assert schema.check(sql) == schema.latest() == 10
    sql.run("INSERT INTO schema_version (version) VALUES (11)")
    with pytest.raises(postgres.WrongSchema, match=r"^the schema is version 11, newer than this"):
        schema.check(sql)
    sql.run("DELETE FROM schema_version WHERE version >= 10")
    with pytest.raises(
        postgres.WrongSchema,
        match=r"^the schema is version 9, this energy-worker needs 10: run the set-up$",
    ):
        schema.check(sql)
    sql.run("DROP TABLE schema_version")
    with pytest.raises(postgres.WrongSchema, match="version 0, this energy-worker needs 10"):
        schema.check(sql)


def test_the_processor_waits_on_an_older_schema_with_one_line(
    make_processor, r, sql, caplog, monkeypatch
):
    """Too old: the processor takes nothing from Redis and says so once, looking again now and
    then; once the set-up has run, it commits what waited."""
    monkeypatch.setenv("SCHEMA_RETRY", "0.1")  # the shortest look the setting allows, not 5 s
    sql.run("DELETE FROM schema_version WHERE version = 10")
    pulses(r, 1, [1000, 2800])
    enqueue(r, "stop", "true")
    processor = make_processor()
    for _ in range(5):
        assert processor.run_once() is False
    lines = [rec for rec in caplog.records if "run the set-up" in rec.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "the schema is version 9, this energy-worker needs 10" in lines[0].getMessage()
    assert not processor.session.is_open  # not even the lock: a processor that may work takes it
    assert r.llen("energy-worker:work") == 3  # nothing taken
    sql.run("INSERT INTO schema_version (version) VALUES (10)")  # as the set-up does
    wait_until(processor.run_once, 15, what="the stop item committed")
    assert status(sql, 1)["meter_counts"] == 2
    assert "PostgreSQL is back" in caplog.text


@pytest.mark.processes
def test_the_pusher_process_waits_on_an_older_schema_with_one_line(spawn, r, sql):
    sql.run("DELETE FROM schema_version WHERE version = 10")
    proc = spawn("pusher", GOOGLE_WEBHOOK_URL="", SCHEMA_RETRY="1")  # a look a second, not 5 s
    proc.wait_for_log("needs 10: run the set-up")

    def last_look() -> float:  # when the pusher's session last ran a statement (0: none yet)
        rows = sql.run(
            "SELECT extract(epoch FROM query_start)::float8 FROM pg_stat_activity "
            "WHERE application_name = 'energy-worker pusher' AND state = 'idle' "
            "AND query_start IS NOT NULL"
        )
        return rows[0][0] if rows else 0.0

    first = wait_until(last_look, what="the pusher's session")
    wait_until(lambda: last_look() > first, 30, what="the pusher to look again")
    assert proc.log().count("run the set-up") == 1
    assert proc.popen.poll() is None  # waiting, not exiting into a restart loop
    sql.run("INSERT INTO schema_version (version) VALUES (10)")
    proc.wait_for_log("PostgreSQL is back", 30)
    assert proc.log().count("run the set-up") == 1
    assert sql.run("SELECT tz FROM pusher_state") != [[None]]  # it works: it adopted its zone
