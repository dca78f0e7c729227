"""The baseline migration (services/energy_worker/adapters/sql/migrations/0010_baseline.sql)
and the set-up's apply: meters follow the config, and a database of the original stack or of an
earlier version (tests/schema_history/) is migrated without loss."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from decimal import Decimal

from energy_worker.adapters import config, postgres, schema
from energy_worker.adapters.sql import ingest as store
from energy_worker.core import totals
from energy_worker.core.domain import Meter
from energy_worker.programs.pusher import Pusher
from energy_worker.programs.pusher import settings as pusher_settings
from schema_support import ORIGINAL_TABLES, make_as_shipped


def test_applying_twice_changes_nothing_and_keeps_counts(sql):
    sql.run("UPDATE meter_status_stored SET meter_counts = 12345, kWh = 12.345 WHERE meter_no = 1")
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
    con = postgres.connect(fresh_pg, "test")
    con.execute_simple(
        ORIGINAL_TABLES + "INSERT INTO meter_metadata VALUES (1, 'Main', 1000, 17250, 1, 5);"
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
    # its history counted as pulses from its first row on, and the tally follows the last row
    assert con.run("SELECT pulses FROM consumption ORDER BY index") == [[1], [2]]
    assert con.run("SELECT pulses_counted FROM meter_status WHERE meter_no = 1") == [[2]]
    records = store.load_status(con)
    assert records[1].state.counts == 279970  # kept
    assert records[1].run is None  # the next pulse starts a run of ours
    assert con.run("SELECT upper_index FROM meter_status WHERE meter_no = 1")[0][0] == 2
    con.run(
        "INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kWh, "
        "cor_time_stamp, pulses) VALUES (1, 40000, 1, 0.001, now(), 3)"
    )  # > SMALLINT: fits now
    assert len(store.load_status(con)) == 7  # the other configured meters were added
    con.close()


def test_a_grafana_role_problem_does_not_stop_the_set_up(worker_env, pg):
    """Grafana's login is Grafana's business: the pulse path must start regardless."""
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.programs.set_up"],
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


def test_a_database_from_before_pulses_gets_them_once_and_its_totals_again(fresh_pg, r):
    """Version 5 on a database with history: the pulses of each row from the steps of the
    count (none for a typed-in reading, nor for a step down), the meter's tally after its last
    row, and every total recomputed once, now without the typed-in reading as energy."""
    cph = totals.zone("Europe/Copenhagen")

    def local(*args: int) -> datetime:
        return totals.resolve(datetime(*args), cph)  # type: ignore[arg-type]

    con = postgres.connect(fresh_pg, "test")
    assert make_as_shipped(con, 4, config.load_meters()) == 4
    history = [  # meter, counts, typed in, local time (1000 pulses per kWh)
        (1, 90, False, (2024, 5, 31, 23)),
        (1, 100, False, (2024, 6, 1, 9, 50)),
        (1, 105, False, (2024, 6, 1, 10, 20)),
        (1, 279970, True, (2024, 6, 1, 10, 30)),  # 279.97 kWh typed in
        (1, 279972, False, (2024, 6, 1, 10, 40)),
        (1, 279980, False, (2024, 6, 1, 11, 10)),
        (2, 50, False, (2024, 6, 1, 9)),
        (2, 40, False, (2024, 6, 1, 9)),  # a step down no pulse makes: the original's reset
        (2, 41, False, (2024, 6, 1, 9)),
    ]
    for meter, counts, typed, at in history:
        con.run(
            "INSERT INTO consumption (meter_no, meter_counts, kWh, cor_time_stamp, typed_in) "
            "VALUES (:m, :c, :k, :t, :typed)",
            m=meter,
            c=counts,
            k=Decimal(counts) / 1000,
            t=local(*at),
            typed=typed,
        )
    con.run("UPDATE meter_status SET pulses_counted = 7")
    # The pusher had computed every hour up to noon, counting the typed-in reading as energy.
    con.run(
        """UPDATE pusher_state SET tz = 'Europe/Copenhagen', next_push_day = '2024-06-02',
               totals_until = :until, seen_index = (SELECT max(index) FROM consumption)""",
        until=local(2024, 6, 1, 12),
    )
    con.run(
        """INSERT INTO meter_hourly_totals (hour_start, meter_no, hour_end, day, kWh_start, kWh,
               kWh_diff) VALUES (:s, 1, :e, '2024-06-01', 0.1, 279.972, 279.872)""",
        s=local(2024, 6, 1, 10),
        e=local(2024, 6, 1, 11),
    )

    assert schema.apply(con, config.load_meters()) == 10
    rows = con.run("SELECT meter_no, pulses FROM consumption ORDER BY index")
    assert rows == [[1, 1], [1, 11], [1, 16], [1, 16], [1, 18], [1, 26], [2, 1], [2, 1], [2, 2]]
    tallies = con.run("SELECT meter_no, pulses_counted FROM meter_status ORDER BY meter_no")
    assert tallies[:3] == [[1, 26], [2, 2], [3, 7]]  # meter 3 has no history: as it was
    assert con.run("SELECT seen_index, totals_until FROM pusher_state") == [[0, None]]

    # Once: a second set-up leaves the pulses and the pusher's progress alone.
    con.run("UPDATE consumption SET pulses = pulses + 1000 WHERE meter_no = 2")
    con.run("UPDATE pusher_state SET seen_index = 5")
    schema.apply(con, config.load_meters())
    assert con.run("SELECT sum(pulses) FROM consumption WHERE meter_no = 2") == [[3004]]
    assert con.run("SELECT seen_index FROM pusher_state") == [[5]]
    con.run("UPDATE consumption SET pulses = pulses - 1000 WHERE meter_no = 2")
    con.run("UPDATE pusher_state SET seen_index = 0")

    clock = local(2024, 6, 2, 0, 5)
    pusher = Pusher(
        postgres.LockedSession(lambda name: postgres.connect(fresh_pg, name), "pusher"),
        r,
        pusher_settings.PushSettings(sheet_url=None, tz=cph),
        lambda: clock,
    )
    try:
        pusher.step(block=False)
    finally:
        pusher.close()
    hours = con.run(
        "SELECT hour_start, kWh_start, kWh, kWh_diff, kWh_set FROM meter_hourly_totals "
        "WHERE meter_no = 1 AND hour_start IN (:a, :b) ORDER BY hour_start",
        a=local(2024, 6, 1, 10),
        b=local(2024, 6, 1, 11),
    )
    assert hours == [
        [local(2024, 6, 1, 10), Decimal("0.1"), Decimal("279.972"), Decimal("0.007"),
         Decimal("279.865")],
        [local(2024, 6, 1, 11), Decimal("279.972"), Decimal("279.98"), Decimal("0.008"),
         Decimal("0")],
    ]  # fmt: skip
    day = con.run(
        "SELECT kWh_start, kWh, kWh_diff, kWh_set FROM meter_daily_totals "
        "WHERE meter_no = 1 AND day = '2024-06-01'"
    )
    assert day == [[Decimal("0.09"), Decimal("279.98"), Decimal("0.025"), Decimal("279.865")]]
    assert con.run("SELECT kWh_diff_1 FROM meter_totals WHERE day = '2024-06-01'") == [
        [Decimal("0.025")]
    ]
    (names,) = con.run("SELECT proargnames FROM pg_proc WHERE proname = 'energy_per_period'")[0]
    assert "kwh_set" in names  # the function of version 4 was replaced
    con.close()


def test_the_installation_id_is_made_once(sql):
    """The publisher's entities in Home Assistant derive from it: it must never change."""
    ((first,),) = sql.run("SELECT id FROM installation")
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert schema.apply(sql, config.load_meters()) >= 5
    assert sql.run("SELECT id FROM installation") == [[first]]


def test_a_version_7_database_is_brought_to_fewer_writes(fresh_pg):
    """Version 8 on a database that version 7 made and the processor has used: the history
    and the totals lose their foreign keys, the history its primary key for a BRIN index,
    the current epoch's progress is read from worker_progress, and nothing is lost."""
    con = postgres.connect(fresh_pg, "test")
    meters = config.load_meters()
    assert make_as_shipped(con, 7, meters) == 7
    con.execute_simple(
        "INSERT INTO consumption (meter_no, meter_counts, kWh, cor_time_stamp, pulses)"
        "  VALUES (1, 5, 0.005, now(), 5);"
        "UPDATE meter_status SET upper_index = 1, meter_counts = 5, pulses_counted = 5"
        "  WHERE meter_no = 1;"
        "UPDATE worker_progress SET epoch = 'e2', last_seq = 40;"
        "INSERT INTO worker_epochs VALUES ('e1', 7), ('e2', 40);"
    )

    def keys() -> list[list[object]]:
        return con.run(
            "SELECT conrelid::regclass::text, contype FROM pg_constraint "
            "WHERE contype IN ('f', 'p') AND conrelid::regclass::text IN "
            "('consumption', 'meter_hourly_totals', 'meter_daily_totals') ORDER BY 1, 2"
        )

    assert keys() == [
        ["consumption", "f"], ["consumption", "p"], ["meter_daily_totals", "f"],
        ["meter_daily_totals", "p"], ["meter_hourly_totals", "f"], ["meter_hourly_totals", "p"],
    ]  # fmt: skip
    assert schema.apply(con, meters) == 10
    assert schema.apply(con, meters) == 10  # and again: nothing left to do
    assert keys() == [["meter_daily_totals", "p"], ["meter_hourly_totals", "p"]]
    (method,) = con.run(
        "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = 'consumption'::regclass "
        "AND c.relname = 'consumption_index_range'"
    )
    assert method == ["brin"]
    assert store.load_done(con) == {"e1": 7, "e2": 40}
    records = store.load_status(con)
    assert records[1].state.counts == 5 and records[1].counted == 5
    assert con.run("SELECT index, meter_counts FROM consumption") == [[1, 5]]


def test_pushes_waiting_from_before_version_9_get_their_day_and_meters(fresh_pg):
    """Pushes recorded before a push named its meters: the day each stands for, and the meters
    configured now where their number matches the push's values (recorded in meter order)."""
    con = postgres.connect(fresh_pg, "test")
    con.execute_simple(
        """ALTER TABLE push_outbox DROP COLUMN day, DROP COLUMN meter_nos,
               DROP COLUMN meter_names;
           DELETE FROM schema_version WHERE version >= 9;
           UPDATE pusher_state SET tz = 'Europe/Copenhagen';"""
    )
    seven = ",".join(["1.00"] * 7)
    for key, at, data, sent in [
        ("day:2024-06-01", "2024-06-01 22:00+00", seven, None),
        ("request:e:1", "2024-06-02 22:30+00", seven, None),  # 00:30 local: the 3rd
        ("request:e:2", "2024-06-03 10:00+00", "1.00,2.00", None),  # fewer meters then
        ("day:2024-05-31", "2024-05-31 22:00+00", seven, "2024-06-01 00:02+00"),  # sent
    ]:
        con.run(
            "INSERT INTO push_outbox (dedup_key, reading_at, data_string, sent_at) "
            "VALUES (:k, CAST(:at AS timestamptz), :d, CAST(:s AS timestamptz))",
            k=key,
            at=at,
            d=data,
            s=sent,
        )
    assert schema.apply(con, config.load_meters()) >= 9
    rows = con.run(
        "SELECT dedup_key, day::text, meter_nos, meter_names[1] FROM push_outbox ORDER BY id"
    )
    assert rows == [
        ["day:2024-06-01", "2024-06-01", [1, 2, 3, 4, 5, 6, 7], "Meter 1"],
        ["request:e:1", "2024-06-03", [1, 2, 3, 4, 5, 6, 7], "Meter 1"],
        ["request:e:2", "2024-06-03", None, None],  # sent without meters: the script says so
        ["day:2024-05-31", "2024-05-31", None, None],
    ]
    con.close()


def test_a_version_9_database_keeps_what_every_reader_sees(fresh_pg):
    """Version 10 renames meter_status to meter_status_stored and puts a view of that name in
    its place: on a database version 9 made and the processor used, every reader sees the same
    values before and after, the views that read meter_status read the view, and the next
    set-up changes nothing."""
    con = postgres.connect(fresh_pg, "test")
    meters = config.load_meters()
    assert make_as_shipped(con, 9, meters) == 9
    assert con.run("SELECT relkind FROM pg_class WHERE relname = 'meter_status'") == [["r"]]
    con.execute_simple(
        "INSERT INTO consumption (index, meter_no, watt_consumption, meter_counts, kWh,"
        "  pulse_time_stamp, pulse_period, cor_time_stamp, pulses)"
        "  VALUES (1, 1, NULL, 4, 0.004, 1000, -1, '2024-06-01 10:00+00', 4),"
        "         (2, 1, 2000, 6, 0.006, 4600, 1800, '2024-06-01 10:00:04+00', 6),"
        "         (3, 2, NULL, 9, 0.009, 700, -1, '2024-06-01 10:01+00', 9);"
        "UPDATE meter_status SET upper_index = 2, run_index = 1, reference_watt_consumption = 2000,"
        "  meter_counts = 6, kWh = 0.006, pulse_time_stamp = 4600, pulse_period = 1800,"
        "  cor_time_stamp = '2024-06-01 10:00:04+00', pulses_counted = 6, pulses_repeated = 2,"
        "  pulses_rejected = 1, time_stamp = '2024-06-01 10:00:05+00' WHERE meter_no = 1;"
        "UPDATE meter_status SET upper_index = 3, run_index = 3, meter_counts = 9, kWh = 0.009,"
        "  pulse_time_stamp = NULL, cor_time_stamp = '2024-06-01 10:01+00', pulses_counted = 9,"
        "  time_stamp = '2024-06-01 10:01:02+00' WHERE meter_no = 2;"
    )
    readers = [
        "SELECT * FROM meter_status ORDER BY meter_no",
        "SELECT meter_no, kwh, pulses_counted, pulses_repeated, pulses_rejected"
        "  FROM meter_overview ORDER BY meter_no",
        "SELECT backlog, pulses_rejected FROM worker_overview",
    ]
    before = [con.run(q) for q in readers]
    loaded = store.load_status(con)
    assert schema.apply(con, meters) == 10
    kinds = con.run(
        "SELECT relname, relkind FROM pg_class WHERE relname IN "
        "('meter_status', 'meter_status_stored', 'meter_status_meter_no') ORDER BY relname"
    )
    assert kinds == [
        ["meter_status", "v"],
        ["meter_status_meter_no", "i"],
        ["meter_status_stored", "r"],
    ]
    assert [con.run(q) for q in readers] == before
    assert store.load_status(con) == loaded
    assert schema.apply(con, meters) == 10  # again: the next set-up has nothing to run
    assert [con.run(q) for q in readers] == before
    # The views that read meter_status read the view: a move of the row shows through them.
    con.run(
        "UPDATE consumption SET meter_counts = 7, kWh = 0.007, pulses = 7, pulse_time_stamp = 6400"
        " WHERE index = 2"
    )
    assert con.run("SELECT kwh, pulses_counted FROM meter_overview WHERE meter_no = 1") == [
        [Decimal("0.007"), 7]
    ]
    con.close()
