"""meter_status is a view (schema version 10): the stored row, overlaid with the meter's latest
history row where that row moved since. After every commit it must show exactly what the table
showed when the processor wrote every touched meter's row each commit: an oracle table here is
written that old way, in the same transaction, and compared with the view after each commit,
across moves, new rows, a power-up, repeated and rejected pulses, a typed-in reading, a
quarter-hour boundary and a reconnection."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from energy_worker.adapters import postgres
from energy_worker.adapters.sql import ingest as store
from energy_worker.core import ledger
from energy_worker.core.domain import MeterRecord, at_time
from energy_worker.programs.processor import Processor
from helpers import REPO, T0, enqueue, wait_until

METERS_FILE = REPO / "services" / "energy_worker" / "meters.toml"

# The table's write before version 10, verbatim but for the table's name: every touched meter.
OLD_SAVE_STATUS = """
    UPDATE status_oracle AS s SET
        meter_counts = u.counts, kWh = u.kwh, pulse_time_stamp = u.millis,
        pulse_period = u.period, cor_time_stamp = u.at,
        reference_watt_consumption = u.ref, run_index = u.run_index,
        upper_index = u.latest, pulses_counted = u.counted,
        pulses_repeated = u.repeated, pulses_rejected = u.over_max, time_stamp = now()
    FROM unnest(CAST(:meter AS int[]), CAST(:counts AS bigint[]), CAST(:kwh AS numeric[]),
                CAST(:millis AS bigint[]), CAST(:period AS bigint[]),
                CAST(:at AS timestamptz[]), CAST(:ref AS bigint[]),
                CAST(:run_index AS bigint[]), CAST(:latest AS bigint[]),
                CAST(:counted AS bigint[]), CAST(:repeated AS bigint[]),
                CAST(:over_max AS bigint[]))
         AS u(meter, counts, kwh, millis, period, at, ref, run_index, latest, counted,
              repeated, over_max)
    WHERE s.meter_no = u.meter
"""


def old_save_status(
    con: postgres.Connection, records: dict[int, MeterRecord], kwh: dict[int, Decimal]
) -> None:
    if not records:
        return
    con.run(
        OLD_SAVE_STATUS,
        meter=list(records),
        counts=[r.state.counts for r in records.values()],
        kwh=[kwh[no] for no in records],
        millis=[r.state.last_millis for r in records.values()],
        period=[r.state.last_period for r in records.values()],
        at=[
            None if r.state.last_at_ms is None else at_time(r.state.last_at_ms)
            for r in records.values()
        ],
        ref=[r.run.reference_watt if r.run else None for r in records.values()],
        run_index=[r.run.first_row if r.run else None for r in records.values()],
        latest=[r.latest_row for r in records.values()],
        counted=[r.counted for r in records.values()],
        repeated=[r.repeated for r in records.values()],
        over_max=[r.over_max for r in records.values()],
    )


class OracleProcessor(Processor):
    """The processor, whose every commit also writes the oracle table the way before."""

    def write(self, con: postgres.Connection, plan: ledger.Plan, backlog: int) -> str:
        current = super().write(con, plan, backlog)
        old_save_status(con, plan.records, plan.readings)
        return current


@pytest.fixture
def oracle(pg, sql) -> Iterator[Any]:
    sql.run("DROP TABLE IF EXISTS status_oracle")
    sql.run("CREATE TABLE status_oracle AS SELECT * FROM meter_status")
    yield sql
    sql.run("DROP TABLE IF EXISTS status_oracle")


def both(sql: Any) -> tuple[list[Any], list[Any]]:
    view = sql.run("SELECT * FROM meter_status ORDER BY meter_no")
    table = sql.run("SELECT * FROM status_oracle ORDER BY meter_no")
    return view, table


def stored_moves(sql: Any) -> int:
    """Meters whose view differs from their stored row: the overlay at work."""
    return sql.run(
        "SELECT count(*) FROM meter_status v JOIN meter_status_stored s USING (meter_no) "
        "WHERE (v.meter_counts, v.time_stamp) IS DISTINCT FROM (s.meter_counts, s.time_stamp)"
    )[0][0]


M1, M2, TYPED1 = "channel:1:timestamp", "channel:2:timestamp", "channel:1:metercount"


def test_the_view_shows_what_the_table_held_after_every_commit(pg, r, sql, oracle):
    def processor() -> OracleProcessor:
        return OracleProcessor(r, pg, commit_interval=0.05, durable_after=0.0)

    p = processor()
    second = 1000
    quarter = 15 * 60 * 1000
    start = (T0 // quarter + 1) * quarter - 60_000  # a minute before a quarter hour ends
    # Each step is one commit: (key, value, wall ms after start) for meters 1 and 2.
    steps: list[list[tuple[str, str, int]]] = [
        [(M1, "1000", 0), (M2, "5000", 0)],  # first
        [(M1, "2800", 2 * second), (M2, "6000", second)],
        [(M1, "4600", 4 * second), (M2, "7000", 2 * second)],
        [(M1, "6400", 6 * second)],  # moves only
        [(M1, "8200", 8 * second), (M1, "8200", 8 * second)],
        [(M1, "10000", 10 * second), (M2, "8000", 3 * second)],
        [(M2, "8001", 3 * second + 1)],  # above the maximum: rejected power
        [(M2, "9000", 4 * second), (M2, "10000", 5 * second)],
        [("powerup", "true", 12 * second)],
        [(M1, "500", 13 * second)],  # first after the power-up
        [(M1, "2300", 15 * second), (M1, "4100", 17 * second)],
        [(M1, "5900", 19 * second)],
        [(TYPED1, "27997", 20 * second)],  # typed in: 279.97 kWh
        [(M1, "7700", 21 * second)],
        [(M1, "9500", 23 * second), (M1, "11300", 25 * second)],
        [(M1, "13100", 27 * second)],
        [(M1, "14900", 61 * second)],  # past the quarter hour: a new row
        [(M1, "16700", 63 * second), (M2, "11000", 64 * second)],
        [(M1, "18500", 65 * second), (M2, "12000", 65 * second)],
        [("powerup", "true", 66 * second), (M1, "100", 67 * second)],
        [(M1, "1900", 69 * second)],
        [("powerup", "true", 70 * second)],
        [("powerup", "true", 71 * second)],  # changes nothing but the time of the change
        [(M1, "3700", 72 * second)],
    ]
    overlaid = 0
    for i, step in enumerate(steps):
        if i == len(steps) // 2:  # a reconnection loads the state from the view
            p.session.close()
            p = processor()
        for key, value, after in step:
            enqueue(r, key, value, start + after)
        target = sql.run("SELECT last_seq FROM worker_progress")[0][0] + len(step)

        def committed(t: int = target, q: OracleProcessor = p) -> bool:
            return q.run_once() or sql.run("SELECT last_seq FROM worker_progress")[0][0] >= t

        wait_until(committed, 15, what=f"step {i} committed")
        view, table = both(sql)
        assert view == table, f"after step {i}"
        overlaid += stored_moves(sql)
    assert overlaid > 0  # commits that moved a row without writing the stored row were checked
    assert store.load_status(sql) == p.records
    p.session.close()
