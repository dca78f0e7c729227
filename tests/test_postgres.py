"""adapters/postgres.py against the real PostgreSQL: transactions, the one rule that tells an
outage from a refused statement, and the lock that lets one process of a kind work on a
database, also after a network partition left its old session on the server."""

from __future__ import annotations

import time
from dataclasses import replace

import pg8000.native
import pytest

from energy_worker.adapters import config, postgres
from energy_worker.programs.processor import Processor
from helpers import T0, pulses, status, wait_until
from tcpproxy import TcpProxy

LEASE = 2.0  # the tests' lease; the service's is postgres.LEASE


def test_a_transaction_commits_or_rolls_back(sql):
    with postgres.transaction(sql):
        sql.run("UPDATE worker_progress SET backlog = 7")
    with pytest.raises(ZeroDivisionError), postgres.transaction(sql):
        sql.run("UPDATE worker_progress SET backlog = 8")
        _ = 1 / 0
    assert sql.run("SELECT backlog FROM worker_progress")[0][0] == 7


def test_a_session_compiles_no_query_and_keeps_utc(pg):
    """energy_per_period's estimate (millions of rows for a few) would make the server JIT-compile
    each call: half a second here, seconds on a Pi."""
    con = postgres.connect(pg, "test")
    try:
        assert con.run("SHOW jit") == [["off"]]
        assert con.run("SHOW TimeZone") == [["UTC"]]
        # the settings that end the session of a vanished client, sent in the start-up message
        assert con.run(
            "SELECT current_setting('idle_in_transaction_session_timeout'), "
            "current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
            "current_setting('tcp_keepalives_count')"
        ) == [["1min", "10", "5", "3"]]
        (plan,) = con.run(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM energy_per_period("
            "now() - interval '1 year', now(), 'hour')"
        )[0]
        assert "JIT" not in plan[0]
    finally:
        con.close()


def test_schema_retry_comes_from_the_environment_within_bounds(monkeypatch):
    monkeypatch.delenv("SCHEMA_RETRY", raising=False)
    assert postgres.WrongSchema("old").retry == postgres.SCHEMA_RETRY == 5.0
    monkeypatch.setenv("SCHEMA_RETRY", "1")
    assert postgres.WrongSchema("old").retry == 1.0
    for bad in ("abc", "nan", "0", "-1", "inf"):
        monkeypatch.setenv("SCHEMA_RETRY", bad)
        with pytest.raises(config.ConfigError, match="SCHEMA_RETRY"):
            postgres.WrongSchema("old")


def test_an_outage_is_told_from_a_refused_statement(sql):
    with pytest.raises(pg8000.native.DatabaseError) as refused:
        sql.run("SELECT * FROM no_such_table")
    assert postgres.sqlstate(refused.value) == "42P01" and not postgres.is_outage(refused.value)
    assert postgres.is_outage(ConnectionResetError())
    assert postgres.is_outage(pg8000.native.InterfaceError("network error"))
    shutdown = pg8000.native.DatabaseError({"C": "57P01", "M": "terminating connection"})
    assert postgres.is_outage(shutdown)


def session(settings: config.PostgresSettings, timeout: float = 2.0) -> postgres.LockedSession:
    return postgres.LockedSession(
        lambda name: postgres.connect(settings, name, timeout), "locktest", LEASE
    )


@pytest.mark.slow
def test_a_live_holder_keeps_its_lock(pg):
    first, second = session(pg), session(pg)
    try:
        first.connection()
        with pytest.raises(postgres.LockHeld, match="another locktest is working"):
            second.connection()
        # Longer than the lease, with the holder's loop running: its heartbeats keep it alive.
        deadline = time.monotonic() + LEASE + 1
        while time.monotonic() < deadline:
            first.keep_alive()
            time.sleep(0.1)
        with pytest.raises(postgres.LockHeld):
            second.connection()
        first.close()
        second.connection()  # free: taken at once, on the connection kept for the next try
    finally:
        first.close()
        second.close()


@pytest.mark.slow
def test_after_a_partition_the_lock_of_the_lost_session_is_taken_over(pg, sql):
    """The holder's network goes silent, its session stays on the server; once it has been
    silent for the lease, a new session terminates it and takes the lock: one holder only."""
    proxy = TcpProxy(pg.host, pg.port)
    through = replace(pg, host="127.0.0.1", port=proxy.port)
    lost, fresh = session(through), session(through)
    try:
        lost.connection()
        ((lost_pid,),) = sql.run(  # this database's: another test's run may hold one too
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'energy-worker locktest' "
            "AND datname = current_database()"
        )
        proxy.blackhole()
        with pytest.raises(postgres.ERRORS):  # the partition: no answer, and no error either
            lost.connection().run("SELECT 1")
        proxy.heal()
        healed = time.monotonic()
        wait_until(lambda: _took(fresh), LEASE + 10, interval=0.2, what="the lock taken over")
        assert time.monotonic() - healed <= LEASE + 3
        alive = sql.run("SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=lost_pid)
        assert alive[0][0] == 0  # terminated: whatever it had not committed is rolled back
    finally:
        lost.close()
        fresh.close()
        proxy.close()


def _took(candidate: postgres.LockedSession) -> bool:
    try:
        candidate.connection()
    except postgres.LockHeld:
        return False
    return True


@pytest.mark.slow
def test_the_processor_commits_again_within_the_lease_after_a_partition(pg, sql, r):
    """The processor's own session is the one the partition leaves behind: when the network
    is back it connects anew, takes its lock over, and commits what came meanwhile."""
    proxy = TcpProxy(pg.host, pg.port)
    processor = Processor(
        r,
        replace(pg, host="127.0.0.1", port=proxy.port),
        lease=LEASE,
        db_timeout=1.0,
        commit_interval=0.05,
        durable_after=0.0,
    )
    try:
        pulses(r, 1, [1000, 2800])
        wait_until(lambda: processor.run_once() or status(sql, 1)["meter_counts"] == 2, 15)
        proxy.blackhole()
        pulses(r, 1, [4600, 6400], start_ms=T0 + 3600)
        processor.run_once()  # its commit goes unanswered: it gives up on that connection
        assert processor.pg_outage.down
        proxy.heal()
        healed = time.monotonic()
        wait_until(lambda: processor.run_once() or status(sql, 1)["meter_counts"] == 4, LEASE + 15)
        assert time.monotonic() - healed <= LEASE + 8
    finally:
        processor.session.close()
        proxy.close()
