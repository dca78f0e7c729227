"""The processor against the real PostgreSQL and Redis, in-process (Processor.run_once):
arithmetic in the tables, exactly-once under crashes, batching, and outages of either server.
As a process only where a process is what is tested: kill -9 in the middle of a backlog."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from decimal import Decimal

import pytest
import redis

from energy_worker.adapters import work_queue
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.adapters.sql import ingest as store
from energy_worker.core.domain import Item, at_time
from energy_worker.core.keys import Kind
from energy_worker.programs.processor import Processor
from helpers import (
    METERS,
    REPO,
    T0,
    Proc,
    backlog,
    enqueue,
    enqueue_many,
    history,
    item_json,
    pulses,
    status,
    wait_until,
)
from tcpproxy import TcpProxy

METERS_FILE = REPO / "services" / "energy_worker" / "meters.toml"


def committed(sql) -> int:
    return sql.run("SELECT last_seq FROM worker_progress")[0][0]


def drained(r: redis.Redis) -> bool:
    return r.llen(work_queue.WORK) == 0 and r.llen(work_queue.PROCESSING) == 0


def run_until(processor: Processor, condition, timeout: float = 15.0) -> None:
    wait_until(lambda: processor.run_once() or condition(), timeout)


def test_pulses_become_exact_history_with_the_deadband(make_processor, r, sql, caplog):
    # 2000 W for four pulses, a jump to 4000 W, a repeat, then back to 2000 W
    pulses(r, 1, [1000, 2800, 4600, 6400, 8200, 9100, 9100, 10000, 11800])
    enqueue(r, "stop", "true")
    make_processor().run()
    assert history(sql, 1) == [
        (None, 1, Decimal("0.001"), -1),  # first pulse: no predecessor, no power
        (2000, 2, Decimal("0.002"), 1800),  # the 2000 W run: its first row ...
        (2000, 5, Decimal("0.005"), 1800),  # ... and its moving row, at the run's last pulse
        (4000, 6, Decimal("0.006"), 900),  # 4000 W: a new run (the repeat counts nothing)
        (4000, 7, Decimal("0.007"), 900),
        (2000, 8, Decimal("0.008"), 1800),  # back to 2000 W: a new run
    ]
    s = status(sql, 1)
    assert (s["meter_counts"], s["kwh"], s["pulses_repeated"], s["pulse_time_stamp"]) == (
        8,
        Decimal("0.008"),
        1,
        11800,
    )
    assert "stop: everything before it is committed" in caplog.text
    assert drained(r)


def test_deadband_rows_are_exactly_two_per_plateau(make_processor, r, sql):
    millis = [0]
    for period in [1800] * 10 + [900] * 10 + [1800] * 10:
        millis.append(millis[-1] + period)
    pulses(r, 2, millis)
    enqueue(r, "stop", "true")
    make_processor().run()
    assert [row[0] for row in history(sql, 2)] == [None, 2000, 2000, 4000, 4000, 2000, 2000]
    assert status(sql, 2)["meter_counts"] == 31


def test_reboot_wrap_over_maximum_and_metercount(make_processor, r, sql):
    pulses(r, 3, [2**32 - 900, 900])  # wraps: 1800 ms -> 2000 W
    enqueue(r, "powerup", "true", T0 + 5000)
    enqueue(r, "channel:3:timestamp", "900", T0 + 6000)  # same millis, but a new baseline
    enqueue(r, "channel:3:timestamp", "910", T0 + 6010)  # 10 ms: 360 kW, above 17250 W
    enqueue(r, "channel:3:metercount", "27997", T0 + 7000)
    enqueue(r, "channel:3:timestamp", "2710", T0 + 8800)  # 1800 ms after 910
    enqueue(r, "stop", "true")
    make_processor().run()
    rows = history(sql, 3)
    assert rows[1] == (2000, 2, Decimal("0.002"), 1800)
    # first pulse; 2000 W; after powerup; over the maximum; the typed-in reading; 2000 W
    assert [row[0] for row in rows] == [None, 2000, None, None, None, 2000]
    s = status(sql, 3)
    assert (s["meter_counts"], s["kwh"], s["pulses_rejected"]) == (279971, Decimal("279.971"), 1)
    assert rows[-1][1:] == (279971, Decimal("279.971"), 1800)
    typed = sql.run("SELECT typed_in FROM consumption WHERE meter_no = 3 ORDER BY index")
    assert [t[0] for t in typed] == [False, False, False, False, True, False]


def test_a_typed_in_reading_sets_the_meter_but_counts_no_pulse(make_processor, r, sql):
    """consumption.pulses counts pulses only: a typed-in row carries the count it found, so the
    energy between two rows is their difference, whatever was typed in between."""
    pulses(r, 2, [1000, 2800, 4600, 6400])  # no power yet; then a 2000 W run of three
    enqueue(r, "channel:2:metercount", "27997", T0 + 6000)
    pulses(r, 2, [8200, 10000], start_ms=T0 + 7200)  # 2 more
    enqueue(r, "stop", "true")
    make_processor().run()
    rows = sql.run(
        "SELECT meter_counts, pulses, typed_in FROM consumption WHERE meter_no = 2 ORDER BY index"
    )
    assert rows == [
        [1, 1, False],
        [2, 2, False],
        [4, 4, False],  # the run's moving row, moved on to the fourth pulse
        [279970, 4, True],  # set by hand: no pulse
        [279971, 5, False],
        [279972, 6, False],
    ]
    s = status(sql, 2)
    assert (s["meter_counts"], s["pulses_counted"]) == (279972, 6)  # goes on from the last row


def test_history_lands_at_the_time_the_key_was_taken(make_processor, r, sql):
    pulses(r, 1, [1000, 2800], start_ms=T0)
    enqueue(r, "stop", "true")
    make_processor().run()
    times = sql.run(
        "SELECT (extract(epoch FROM cor_time_stamp) * 1000)::bigint FROM consumption ORDER BY index"
    )
    assert [t[0] for t in times] == [T0, T0 + 1800]


@pytest.mark.parametrize("value", ["4294967295", "0"])
def test_extreme_millis_values(make_processor, r, sql, value):
    enqueue(r, "channel:1:timestamp", value)
    enqueue(r, "stop", "true")
    make_processor().run()
    assert status(sql, 1)["pulse_time_stamp"] == int(value)


def test_backlog_drains_in_few_transactions(make_processor, r, sql):
    n = 20_000
    enqueue_many(r, backlog(n))
    before = sql.run("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    enqueue(r, "stop", "true")
    make_processor().run()
    assert committed(sql) == n + 1
    assert sql.run("SELECT sum(meter_counts) FROM meter_status")[0][0] == n
    sql.run("SELECT pg_stat_clear_snapshot()")
    after = sql.run("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    # 4 batches of 5,000 plus start-up; nothing like one transaction per pulse
    assert after[0][0] - before[0][0] < 60


def test_crash_between_commit_and_ack_counts_nothing_twice(make_processor, r, sql):
    pulses(r, 4, [1000, 2800, 4600])
    first = make_processor()
    assert first.connected()
    items, _ = first.decode(first.queues.take(100))
    plan = first.plan(items)
    first.commit(plan, 0)  # committed ... and the process dies before the ack
    first.session.close()
    assert r.llen(work_queue.PROCESSING) == 3
    enqueue(r, "stop", "true")
    make_processor().run()
    assert status(sql, 4)["meter_counts"] == 3
    assert drained(r)


def test_dead_letters_reach_postgresql_exactly_once(make_processor, r, sql):
    """The router's rejections and the processor's unusable items land in dead_letters in the
    processor's own transaction: a crash between the commit and the ack writes none twice."""
    queues = work_queue.Queues(r, METERS)
    r.set("junk", "x" * 300)
    assert queues.route(b"junk", at_ms=T0).outcome == "rejected"
    pulses(r, 1, [1000])
    r.rpush(work_queue.WORK, item_json(Item("e", 10**9, Kind.PUSH, None, "true", T0 + 5, "g")))
    first = make_processor()
    assert first.connected()
    items, _ = first.decode(first.queues.take(100))
    plan = first.plan(items)
    first.commit(plan, 0)  # committed ... and the process dies before the ack
    first.session.close()
    assert r.llen(work_queue.PROCESSING) == 3
    r.set("Stop", "maybe")  # one more rejection after the crash
    assert queues.route(b"Stop", at_ms=T0 + 9).outcome == "rejected"
    enqueue(r, "stop", "true")
    make_processor().run()
    assert drained(r)
    assert sql.run("SELECT at, key, value, reason FROM dead_letters ORDER BY id") == [
        [at_time(T0), "junk", "x" * work_queue.PREVIEW_BYTES, "unknown key"],
        [at_time(T0 + 5), "g", "true", "the processor does not handle kind PUSH"],
        [at_time(T0 + 9), "Stop", "maybe", "value is not 'true'"],
    ]
    assert status(sql, 1)["meter_counts"] == 1


def test_a_forged_item_cannot_write_a_log_line_of_its_own(make_processor, r, caplog):
    """Its key is Redis-borne text, logged escaped (it used to: a forged item printed a fake
    `router INFO stop: ...` line)."""
    forged = "g\n2026-12-07T01:00:00+0000 router INFO stop: \x1b[2Jeverything stored"
    r.rpush(work_queue.WORK, item_json(Item("e", 1, Kind.PUSH, None, "true", T0, forged)))
    enqueue(r, "stop", "true")
    make_processor().run()
    (line,) = [rec.getMessage() for rec in caplog.records if "cannot use" in rec.getMessage()]
    assert "\n" not in line and "\x1b" not in line and "\\x1b[2J" in line


def test_a_lost_acknowledgement_after_commit_writes_nothing_twice(make_processor, r, sql, redis_db):
    """Redis goes away between the commit and the ack: the batch comes back, is skipped, and
    the stop in it still ends the processor."""
    pulses(r, 2, [1000, 2800, 4600, 6400])
    enqueue(r, "stop", "true")
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        client = connect_redis(replace(redis_db, host="127.0.0.1", port=proxy.port))
        processor = make_processor(client)
        real_ack = processor.queues.ack
        failures: list[int] = []

        def ack_on_a_dead_connection(count: int) -> None:
            if not failures:
                failures.append(count)
                proxy.cut()  # the connection dies just as the ack goes out
                try:
                    real_ack(count)
                finally:
                    proxy.restore()
            else:
                real_ack(count)

        processor.queues.ack = ack_on_a_dead_connection  # type: ignore[method-assign,unused-ignore]
        processor.run()  # returns once the stop is committed and acknowledged
    finally:
        proxy.close()
    assert failures == [5]
    assert [row[1] for row in history(sql, 2)] == [1, 2, 4]  # no second copy of the batch
    assert status(sql, 2)["meter_counts"] == 4
    assert drained(r)


def test_killed_mid_backlog_loses_nothing_and_counts_nothing_twice(spawn, r, sql):
    n = 30_000
    enqueue_many(r, backlog(n))
    enqueue(r, "stop", "true")
    for _ in range(4):  # kill it at four points of the drain
        proc = spawn("processor")
        progress = committed(sql)

        def moved_on(p: int = progress, proc: Proc = proc) -> bool:
            return committed(sql) > p or proc.popen.poll() is not None

        wait_until(moved_on, 30)
        proc.kill(signal.SIGKILL)
    assert spawn("processor").wait_exit(60) == 0
    assert sql.run("SELECT sum(meter_counts), sum(pulses_counted) FROM meter_status")[0] == [n, n]
    assert drained(r)


def test_database_outage_loses_nothing(make_processor, r, sql, pg, caplog):
    proxy = TcpProxy(pg.host, pg.port)
    try:
        processor = make_processor(settings=replace(pg, host="127.0.0.1", port=proxy.port))
        pulses(r, 5, [1000, 2800])
        run_until(processor, lambda: status(sql, 5)["meter_counts"] == 2)
        proxy.cut()
        pulses(r, 5, [4600, 6400, 8200], start_ms=T0 + 3600)
        run_until(processor, lambda: "PostgreSQL unavailable" in caplog.text)
        assert status(sql, 5)["meter_counts"] == 2
        proxy.restore()
        run_until(processor, lambda: status(sql, 5)["meter_counts"] == 5, 30)
        assert "PostgreSQL is back" in caplog.text
        assert caplog.text.count("PostgreSQL unavailable") == 1  # once per change of state
        assert [row[0] for row in history(sql, 5)] == [None, 2000, 2000]
    finally:
        proxy.close()


def test_redis_outage_loses_nothing(make_processor, r, sql, redis_db, caplog):
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        client = connect_redis(replace(redis_db, host="127.0.0.1", port=proxy.port), 2)
        processor = make_processor(client)
        pulses(r, 6, [1000, 2800])
        run_until(processor, lambda: status(sql, 6)["meter_counts"] == 2)
        proxy.cut()
        pulses(r, 6, [4600, 6400], start_ms=T0 + 3600)
        run_until(processor, lambda: "Redis unavailable" in caplog.text)
        assert status(sql, 6)["meter_counts"] == 2
        proxy.restore()
        run_until(processor, lambda: status(sql, 6)["meter_counts"] == 4, 30)
        assert "Redis is back" in caplog.text
        assert caplog.text.count("Redis unavailable") == 1  # once per change of state
        assert [row[0] for row in history(sql, 6)] == [None, 2000, 2000]
        assert status(sql, 6)["pulses_counted"] == 4  # none counted twice
        run_until(processor, lambda: drained(r))  # acknowledged once back
    finally:
        proxy.close()


def test_redis_down_when_it_starts_is_an_outage_not_a_crash(make_processor, r, sql, redis_db):
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        proxy.cut()
        client = connect_redis(replace(redis_db, host="127.0.0.1", port=proxy.port), 2)
        processor = make_processor(client)
        processor.run_once()
        assert processor.redis_outage.down
        proxy.restore()
        pulses(r, 3, [1000, 2800])
        run_until(processor, lambda: status(sql, 3)["meter_counts"] == 2, 30)
    finally:
        proxy.close()


def test_an_item_for_a_meter_unknown_to_the_database_is_kept_not_dropped(make_processor, r, sql):
    sql.run("DELETE FROM meter_status_stored WHERE meter_no = 7")
    sql.run("DELETE FROM meter_metadata WHERE meter_no = 7")
    pulses(r, 7, [1000])
    pulses(r, 1, [1000])
    enqueue(r, "stop", "true")
    processor = make_processor()  # meter 7 as the set-up left it: not in the database
    processor.run()
    letters = r.lrange(work_queue.DEADLETTER, 0, -1)
    assert any(b"channel:7:timestamp" in letter for letter in letters)
    assert status(sql, 1)["meter_counts"] == 1
    # and in PostgreSQL, for Grafana, at the time the router took the key
    assert sql.run("SELECT at, key, value, reason FROM dead_letters") == [
        [at_time(T0), "channel:7:timestamp", "1000", "meter 7 is not configured in PostgreSQL"]
    ]


def test_status_loads_what_it_saved(make_processor, r, sql):
    pulses(r, 2, [1000, 2800, 4600, 6400])
    enqueue(r, "stop", "true")
    processor = make_processor()
    processor.run()
    assert store.load_status(sql)[2] == processor.records[2]


def test_redis_losing_its_data_starts_a_new_epoch_and_nothing_is_skipped(make_processor, r, sql):
    """Redis without persistence restarts empty: sequence numbers start again at 1, in a new
    epoch, whatever the clock says."""
    processor = make_processor()
    pulses(r, 1, [1000, 2800, 4600])
    run_until(processor, lambda: status(sql, 1)["meter_counts"] == 3)
    r.flushdb()
    r.set(work_queue.EPOCH, "0000000000000-00000000")  # an epoch that sorts before the old one
    pulses(r, 1, [6400, 8200], start_ms=T0 + 5400)
    run_until(processor, lambda: status(sql, 1)["meter_counts"] == 5)
    # the earlier epoch's last item is kept; the current one's is worker_progress's
    assert len(store.load_done(sql)) == 2
    assert sql.run("SELECT count(*) FROM worker_epochs")[0][0] == 1


def test_a_commit_writes_one_bookkeeping_row_and_locks_no_meter(make_processor, r, sql):
    """The SD card's share of a commit (bench/README.md, "A day of SD-card writes"): within
    one epoch only worker_progress says how far the work is done (worker_epochs keeps earlier
    epochs), and inserting history locks no meter_metadata row (no foreign-key check, whose
    lock is a WAL record and a page image after each checkpoint)."""
    processor = make_processor()
    assert processor.connected()  # the set-up writes meter_metadata: before the pulses
    # a row lock leaves the locker's transaction id in the row's xmax
    lockers = "SELECT meter_no, xmax::text FROM meter_metadata ORDER BY meter_no"
    before = sql.run(lockers)
    pulses(r, 1, [1000, 2800, 4600, 5500, 6400, 8200])  # 2000 W, 4000 W, 2000 W: new rows
    run_until(processor, lambda: status(sql, 1)["meter_counts"] == 6)
    pulses(r, 2, [1000, 2800], start_ms=T0 + 9000)
    run_until(processor, lambda: status(sql, 2)["meter_counts"] == 2)
    assert sql.run("SELECT count(*) FROM worker_epochs")[0][0] == 0
    ((epoch, seq),) = sql.run("SELECT epoch, last_seq FROM worker_progress")
    assert store.load_done(sql) == {epoch: seq} and seq == 8
    assert sql.run(lockers) == before
    assert sql.run("SELECT count(*) FROM consumption WHERE meter_no = 1")[0][0] >= 4


def test_the_debug_key_switches_its_logging(make_processor, r, caplog):
    caplog.set_level(logging.INFO)
    processor = make_processor()
    processor.debug.interval = 0
    r.set("debug", "true")
    run_until(processor, lambda: "debug logging on" in caplog.text)
    r.set("debug", "false")
    run_until(processor, lambda: "debug logging off" in caplog.text)
