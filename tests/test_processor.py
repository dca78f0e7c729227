"""The processor against the real PostgreSQL and Redis: arithmetic in the tables, exactly-once
under crashes, batching, and outages of either server."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from unittest.mock import ANY

import psutil
import pytest
import redis

from energy_worker import config, db, ledger, queue, store
from energy_worker.keys import classify
from energy_worker.processor import Processor
from helpers import wait_until, write_ini
from tcpproxy import TcpProxy

METERS = frozenset(range(1, 8))
T0 = 1_795_000_000_000  # a wall time in ms


def enqueue(r: redis.Redis, key: str, value: str, at_ms: int | None = None) -> None:
    """What the webhook and the router do for one key: SET it, then route it."""
    r.set(key, value)
    found = classify(key, METERS)
    routed = queue.Queues(r).route(key.encode(), found.kind, found.meter, key, now_ms=at_ms)
    assert routed.outcome == "routed", routed


def enqueue_many(r: redis.Redis, entries: list[tuple[str, str, int]]) -> None:
    """enqueue() for many keys, pipelined."""
    queues = queue.Queues(r)
    pipe = r.pipeline(transaction=False)
    for key, value, at_ms in entries:
        found = classify(key, METERS)
        pipe.set(key, value)
        queues.route_in(pipe, key.encode(), found.kind, found.meter, now_ms=at_ms)
    assert all(result in (True, [b"routed", ANY]) for result in pipe.execute())


def backlog(n: int) -> list[tuple[str, str, int]]:
    """n pulses, round-robin over the 7 meters, each meter at 2000 W (500 ms at 1000/kWh
    gives 7200 W; spaced 500 ms apart)."""
    return [
        (f"channel:{i % 7 + 1}:timestamp", str(1000 + (i // 7) * 500), T0 + (i // 7) * 500)
        for i in range(n)
    ]


def pulses(r: redis.Redis, meter_no: int, millis: list[int], start_ms: int = T0) -> None:
    base = millis[0]
    for m in millis:
        enqueue(r, f"channel:{meter_no}:timestamp", str(m), start_ms + (m - base))


def status(sql, meter_no: int) -> dict:
    cols = [
        "meter_counts",
        "kwh",
        "pulse_time_stamp",
        "pulse_period",
        "pulses_counted",
        "pulses_repeated",
        "pulses_rejected",
        "reference_watt_consumption",
    ]
    (row,) = sql.run(f"SELECT {', '.join(cols)} FROM meter_status WHERE meter_no = :m", m=meter_no)
    return dict(zip(cols, row, strict=True))


def history(sql, meter_no: int) -> list[tuple]:
    return [
        tuple(row)
        for row in sql.run(
            "SELECT watt_consumption, meter_counts, kWh, pulse_period FROM consumption "
            "WHERE meter_no = :m ORDER BY index",
            m=meter_no,
        )
    ]


def committed(sql) -> int:
    return sql.run("SELECT last_seq FROM worker_progress")[0][0]


def drained(r: redis.Redis) -> bool:
    return r.llen(queue.WORK) == 0 and r.llen(queue.PROCESSING) == 0


def test_pulses_become_exact_history_with_the_deadband(spawn, r, sql):
    # 2000 W for four pulses, a jump to 4000 W, a repeat, then back to 2000 W
    pulses(r, 1, [1000, 2800, 4600, 6400, 8200, 9100, 9100, 10000, 11800])
    enqueue(r, "stop", "true")
    proc = spawn("processor")
    assert proc.wait_exit(30) == 0
    assert history(sql, 1) == [
        (None, 1, Decimal("0.001"), -1),  # first pulse: no predecessor, no power
        (2000, 2, Decimal("0.002"), 1800),  # the 2000 W run: its first row ...
        (2000, 5, Decimal("0.005"), 1800),  # ... and its second, moved to the run's last pulse
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
    assert "stop: everything before it is committed" in proc.log()


def test_deadband_rows_are_exactly_two_per_plateau(spawn, r, sql):
    millis = [0]
    for period in [1800] * 10 + [900] * 10 + [1800] * 10:
        millis.append(millis[-1] + period)
    pulses(r, 2, millis)
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    assert [row[0] for row in history(sql, 2)] == [None, 2000, 2000, 4000, 4000, 2000, 2000]
    assert status(sql, 2)["meter_counts"] == 31


def test_reboot_wrap_over_maximum_and_metercount(spawn, r, sql):
    pulses(r, 3, [2**32 - 900, 900])  # wraps: 1800 ms -> 2000 W
    enqueue(r, "powerup", "true", T0 + 5000)
    enqueue(r, "channel:3:timestamp", "900", T0 + 6000)  # same millis, but a new baseline
    enqueue(r, "channel:3:timestamp", "910", T0 + 6010)  # 10 ms: 360 kW, above 17250 W
    enqueue(r, "channel:3:metercount", "27997", T0 + 7000)
    enqueue(r, "channel:3:timestamp", "2710", T0 + 8800)  # 1800 ms after 910
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    rows = history(sql, 3)
    assert rows[1] == (2000, 2, Decimal("0.002"), 1800)
    # first pulse; 2000 W; after powerup; over the maximum; the typed-in reading; 2000 W
    assert [row[0] for row in rows] == [None, 2000, None, None, None, 2000]
    s = status(sql, 3)
    assert (s["meter_counts"], s["kwh"], s["pulses_rejected"]) == (279971, Decimal("279.971"), 1)
    assert rows[-1][1:] == (279971, Decimal("279.971"), 1800)
    typed = sql.run("SELECT typed_in FROM consumption WHERE meter_no = 3 ORDER BY index")
    assert [t[0] for t in typed] == [False, False, False, False, True, False]


def test_history_lands_at_the_time_the_key_was_taken(spawn, r, sql):
    pulses(r, 1, [1000, 2800], start_ms=T0)
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    times = sql.run(
        "SELECT (extract(epoch FROM cor_time_stamp) * 1000)::bigint FROM consumption ORDER BY index"
    )
    assert [t[0] for t in times] == [T0, T0 + 1800]


def test_backlog_drains_in_few_transactions(spawn, r, sql, pg):
    n = 20_000
    enqueue_many(r, backlog(n))
    before = sql.run("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(60) == 0
    assert committed(sql) == n + 1
    total = sql.run("SELECT sum(meter_counts) FROM meter_status")[0][0]
    assert total == n
    sql.run("SELECT pg_stat_clear_snapshot()")
    after = sql.run("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    # 4 batches of 5,000 plus start-up; nothing like one transaction per pulse
    assert after[0][0] - before[0][0] < 60


def test_crash_between_commit_and_ack_counts_nothing_twice(r, sql, pg):
    pulses(r, 4, [1000, 2800, 4600])
    meters = config.load_meters()
    first = Processor(r, pg, meters)
    assert first.connected()
    raw = first.queues.take(100)
    items, _ = first.decode(raw)
    plan = ledger.plan_batch(items, first.meters, first.records, first.done)
    first.commit(plan, 0)  # committed ... and the process dies before the ack
    db.close_quietly(first.con)
    assert r.llen(queue.PROCESSING) == 3
    enqueue(r, "stop", "true")
    second = Processor(r, pg, meters)
    second.run()
    assert status(sql, 4)["meter_counts"] == 3
    assert drained(r)


def test_killed_mid_backlog_loses_nothing_and_counts_nothing_twice(spawn, r, sql):
    n = 30_000
    enqueue_many(r, backlog(n))
    enqueue(r, "stop", "true")
    for _ in range(4):  # kill it at four points of the drain
        proc = spawn("processor")
        progress = committed(sql)
        wait_until(
            lambda p=progress, proc=proc: committed(sql) > p or proc.popen.poll() is not None, 30
        )
        proc.kill(signal.SIGKILL)
    assert spawn("processor").wait_exit(60) == 0
    assert sql.run("SELECT sum(meter_counts), sum(pulses_counted) FROM meter_status")[0] == [n, n]
    assert drained(r)


def test_database_outage_loses_nothing(spawn, r, sql, pg, tmp_path):
    proxy = TcpProxy(pg.host, pg.port)
    try:
        ini = write_ini(replace(pg, host="127.0.0.1", port=proxy.port), tmp_path / "proxy.ini")
        proc = spawn("processor", POSTGRES_INI=str(ini))
        proc.wait_for_log("connected to PostgreSQL")
        pulses(r, 5, [1000, 2800])
        wait_until(lambda: status(sql, 5)["meter_counts"] == 2)
        proxy.cut()
        pulses(r, 5, [4600, 6400, 8200], start_ms=T0 + 3600)
        proc.wait_for_log("PostgreSQL unavailable")
        assert status(sql, 5)["meter_counts"] == 2
        proxy.restore()
        wait_until(lambda: status(sql, 5)["meter_counts"] == 5, 30)
        proc.wait_for_log("PostgreSQL is back")
        assert proc.log().count("PostgreSQL unavailable") == 1  # once per change of state
        assert [row[0] for row in history(sql, 5)] == [None, 2000, 2000]
    finally:
        proxy.close()


def test_redis_outage_loses_nothing(spawn, r, sql, redis_db):
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        proc = spawn("processor", REDIS_PORT=str(proxy.port))
        proc.wait_for_log("connected to PostgreSQL")
        pulses(r, 6, [1000, 2800])
        wait_until(lambda: status(sql, 6)["meter_counts"] == 2)
        proxy.cut()
        pulses(r, 6, [4600, 6400], start_ms=T0 + 3600)
        proc.wait_for_log("Redis unavailable")
        proxy.restore()
        wait_until(lambda: status(sql, 6)["meter_counts"] == 4, 30)
        assert proc.popen.poll() is None
    finally:
        proxy.close()


def test_item_for_a_meter_unknown_to_the_database_is_kept_not_dropped(spawn, r, sql):
    sql.run("DELETE FROM meter_status WHERE meter_no = 7")
    pulses(r, 7, [1000])
    pulses(r, 1, [1000])
    enqueue(r, "stop", "true")
    proc = spawn("processor", METERS_CONFIG=str(_meters_without_7(sql)))
    assert proc.wait_exit(30) == 0
    letters = r.lrange(queue.DEADLETTER, 0, -1)
    assert any(b"channel:7:timestamp" in letter for letter in letters)
    assert status(sql, 1)["meter_counts"] == 1


def _meters_without_7(sql):
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    text = Path(config.REPO_ROOT / "etc" / "meters.toml").read_text()
    text = text[: text.rindex("[[meter]]")]
    sql.run("DELETE FROM meter_metadata WHERE meter_no = 7")
    path = Path(tempfile.mkdtemp()) / "meters.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("value", ["4294967295", "0"])
def test_extreme_millis_values(spawn, r, sql, value):
    enqueue(r, "channel:1:timestamp", value)
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    assert status(sql, 1)["pulse_time_stamp"] == int(value)


def test_status_loads_what_it_saved(r, sql, pg):
    pulses(r, 2, [1000, 2800, 4600, 6400])
    enqueue(r, "stop", "true")
    p = Processor(r, pg, config.load_meters())
    p.run()
    reloaded = store.load_status(sql)
    assert reloaded[2] == p.records[2]


@pytest.mark.parametrize("program", ["router", "processor", "pusher"])
def test_a_program_whose_supervisor_dies_exits(worker_env, r, program):
    """kill -9 of supervisord must not leave programs running unsupervised."""
    supervisor = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m energy_worker.{program} 2>/dev/null & echo $!; wait"],
        env=worker_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert supervisor.stdout is not None
    child = psutil.Process(int(supervisor.stdout.readline()))
    wait_until(lambda: len(child.net_connections()) > 0, 15, what=f"{program} to connect")
    supervisor.kill()
    supervisor.wait()
    wait_until(
        lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
        40,
        what=f"{program} to exit",
    )


def test_sigterm_while_the_database_is_down_exits_at_once(spawn, r, pg, tmp_path):
    proxy = TcpProxy(pg.host, pg.port)
    try:
        proxy.cut()
        ini = write_ini(replace(pg, host="127.0.0.1", port=proxy.port), tmp_path / "proxy.ini")
        proc = spawn("processor", POSTGRES_INI=str(ini))
        proc.wait_for_log("PostgreSQL unavailable")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait_exit(3) == 143  # not after the backoff's wait
    finally:
        proxy.close()


def test_redis_losing_its_data_starts_a_new_epoch_and_nothing_is_skipped(spawn, r, sql):
    """Redis without persistence restarts empty: sequence numbers start again at 1, in a new
    epoch, whatever the clock says."""
    proc = spawn("processor")
    pulses(r, 1, [1000, 2800, 4600])
    wait_until(lambda: status(sql, 1)["meter_counts"] == 3)
    claim = r.get("energy-worker:test-claim")
    r.flushdb()
    r.set("energy-worker:test-claim", claim or b"claimed", ex=3600)
    r.set(queue.EPOCH, "0000000000000-00000000")  # an epoch that sorts before the old one
    pulses(r, 1, [6400, 8200], start_ms=T0 + 5400)
    wait_until(lambda: status(sql, 1)["meter_counts"] == 5)
    assert proc.popen.poll() is None
    assert sql.run("SELECT count(*) FROM worker_epochs")[0][0] == 2


def test_a_lost_acknowledgement_after_commit_writes_nothing_twice(r, sql, pg, redis_db):
    """Redis goes away between the commit and the ack: the batch comes back, is skipped, and
    the stop in it still ends the processor."""
    pulses(r, 2, [1000, 2800, 4600, 6400])
    enqueue(r, "stop", "true")
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, db=redis_db.db)
        processor = Processor(client, pg, config.load_meters())
        real_ack = processor.queues.ack
        failures = []

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

        processor.queues.ack = ack_on_a_dead_connection  # type: ignore[method-assign]
        processor.run()  # returns once the stop is committed and acknowledged
    finally:
        proxy.close()
    assert failures == [5]
    assert [row[1] for row in history(sql, 2)] == [1, 2, 4]  # no second copy of the batch
    assert status(sql, 2)["meter_counts"] == 4
    assert drained(r)


def test_redis_that_lost_its_last_writes_gets_a_new_epoch_before_the_router_starts(
    worker_env, spawn, r, sql
):
    pulses(r, 1, [1000, 2800, 4600])
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    epoch = r.get(queue.EPOCH)
    r.set(queue.SEQ, 2)  # a power cut took the last increments with it
    setup = subprocess.run(
        [sys.executable, "-m", "energy_worker.setup"],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Redis lost writes" in setup.stderr
    assert r.get(queue.EPOCH) != epoch
    pulses(r, 1, [6400, 8200], start_ms=T0 + 5400)  # numbered 3 and 4 again, in the new epoch
    enqueue(r, "stop", "true")
    assert spawn("processor").wait_exit(30) == 0
    assert status(sql, 1)["meter_counts"] == 5


def test_redis_down_when_the_processor_starts_is_an_outage_not_a_crash(spawn, r, sql, redis_db):
    proxy = TcpProxy(redis_db.host, redis_db.port)
    try:
        proxy.cut()
        proc = spawn("processor", REDIS_PORT=str(proxy.port))
        proc.wait_for_log("Redis unavailable")
        proxy.restore()
        pulses(r, 3, [1000, 2800])
        wait_until(lambda: status(sql, 3)["meter_counts"] == 2, 30)
        assert proc.popen.poll() is None and "Traceback" not in proc.log()
    finally:
        proxy.close()
