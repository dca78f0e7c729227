"""The history's row indexes, reserved ahead by the processor (programs/processor/row_indexes.py)
against the real PostgreSQL: consumption.index has no unique constraint, so a number used twice
would be a silent duplicate. Cut connections at a commit, a refused item's isolation, and how
rarely a reservation (a transaction whose commit waits for the disk) happens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from energy_worker.adapters import postgres
from energy_worker.programs.processor import row_indexes
from helpers import T0, backlog, enqueue, enqueue_many, pulses, status, wait_until
from tcpproxy import TcpProxy


def run_until(processor: Any, condition: Any, timeout: float = 20.0) -> None:
    wait_until(lambda: processor.run_once() or condition(), timeout)


def indexes_are_sound(con: Any) -> None:
    """No index twice, and each meter's rows numbered in the order of their time: commits use
    rising numbers (what the pusher's seen_index relies on)."""
    ((rows, distinct),) = con.run("SELECT count(*), count(DISTINCT index) FROM consumption")
    assert rows == distinct and rows > 0
    by_index = con.run("SELECT meter_no, cor_time_stamp FROM consumption ORDER BY index")
    for no in {m for m, _ in by_index}:
        times = [at for m, at in by_index if m == no]
        assert times == sorted(times), f"meter {no}: indexes out of time order"


@pytest.mark.parametrize("lost", ["before the commit", "after the commit"])
def test_a_connection_cut_at_commit_uses_no_index_twice_and_counts_each_pulse_once(
    make_processor, r, sql, pg, caplog, monkeypatch, lost
):
    """The connection dies at the COMMIT of a batch that makes new rows: before the server
    has it (rolled back) or after (committed, but the processor never hears so). Either way the
    processor reconnects, reloads, and the rows it makes then take numbers of their own."""
    proxy = TcpProxy(pg.host, pg.port)
    armed: list[bool] = []
    real_transaction = postgres.transaction

    @contextlib.contextmanager
    def cut_at_commit(con: postgres.Connection) -> Iterator[postgres.Connection]:
        if not armed:
            with real_transaction(con):
                yield con
            return
        armed.clear()
        con.run("BEGIN")
        yield con
        if lost == "before the commit":
            proxy.cut()
            con.run("COMMIT")  # raises: the server rolls back
        else:
            con.run("COMMIT")
            proxy.cut()
            con.run("SELECT 1")  # raises: the commit's outcome never reaches the processor

    monkeypatch.setattr(postgres, "transaction", cut_at_commit)
    try:
        processor = make_processor(settings=replace(pg, host="127.0.0.1", port=proxy.port))
        pulses(r, 5, [1000, 2800])
        run_until(processor, lambda: status(sql, 5)["meter_counts"] == 2)
        assert processor.row_indexes.free  # reserved ahead, some left
        # 2000 W on meter 5 (its moving row) and a first pulse of meter 6: new rows
        pulses(r, 5, [4600, 6400, 8200], start_ms=T0 + 3600)
        pulses(r, 6, [1000], start_ms=T0 + 3600)
        armed.append(True)
        run_until(processor, lambda: "PostgreSQL unavailable" in caplog.text)
        assert not armed  # the cut came at that commit
        proxy.restore()
        wait_until(processor.connected, 20)
        assert not processor.row_indexes.free  # reloaded: what it held is gone
        run_until(processor, lambda: status(sql, 5)["meter_counts"] == 5)
        # Then new runs on both meters (8000 W, 4000 W): more new rows, after the reload.
        pulses(r, 5, [8650, 9100, 9550], start_ms=T0 + 9000)
        pulses(r, 6, [1900, 2800], start_ms=T0 + 9000)
        run_until(processor, lambda: status(sql, 6)["meter_counts"] == 3)
    finally:
        proxy.close()
    assert status(sql, 5)["meter_counts"] == status(sql, 5)["pulses_counted"] == 8
    assert status(sql, 6)["pulses_counted"] == 3
    ((new_rows,),) = sql.run("SELECT count(*) FROM consumption")
    # 5: no power, 2000 W, its moving row, 8000 W, its moving row; 6: no power, 4000 W, its
    # moving row
    assert new_rows == 8
    indexes_are_sound(sql)


def test_the_isolation_of_a_refused_item_leaves_no_index_twice(make_processor, fresh_pg, r):
    """PostgreSQL refuses one pulse: the rolled-back tries of the binary search number their
    rows from the pool again; what is committed in the end numbers each row once."""
    con = postgres.connect(fresh_pg, "tests")
    try:
        con.run(
            "ALTER TABLE consumption ADD CONSTRAINT refuse_4600 "
            "CHECK (pulse_time_stamp IS DISTINCT FROM 4600)"
        )
        pulses(r, 1, [1000, 2800, 4600, 6400, 8200])
        pulses(r, 2, [1000, 2800, 4600])
        pulses(r, 3, [1000, 1450, 1900, 3700])  # 8000 W, then 2000 W: a second run
        enqueue(r, "stop", "true")
        p = make_processor(settings=fresh_pg)
        wait_until(p.run_once, 20, interval=0, what="the processor to commit the stop")
        counts = con.run(
            "SELECT meter_no, meter_counts, pulses_counted FROM meter_status "
            "WHERE meter_no < 4 ORDER BY meter_no"
        )
        assert counts == [[1, 5, 5], [2, 2, 2], [3, 4, 4]]  # meter 2's 4600 refused
        assert con.run("SELECT key, value FROM dead_letters") == [["channel:2:timestamp", "4600"]]
        assert p.row_indexes.reservations == 1  # the tries took back what they did not use
        indexes_are_sound(con)
    finally:
        con.close()


def test_a_reservation_is_rare(make_processor, r, sql):
    """A backlog, then a trickle: one reservation covers the backlog's batches, and small
    batches spend the block before another is reserved."""
    enqueue_many(r, backlog(7000))  # two batches of up to 5,000 items
    processor = make_processor()
    run_until(processor, lambda: status(sql, 7)["meter_counts"] == 1000)
    assert processor.row_indexes.reservations <= 2
    before = processor.row_indexes.reservations
    for i in range(10):
        pulses(r, 1, [10**6 + i * 500], start_ms=T0 + 3_600_000 + i * 500)
        run_until(processor, lambda n=i: status(sql, 1)["meter_counts"] == 1001 + n)
    assert processor.row_indexes.reservations == before
    assert row_indexes.BLOCK >= 256
    indexes_are_sound(sql)
