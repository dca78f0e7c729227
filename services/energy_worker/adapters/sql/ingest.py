"""The processor's SQL: the consumption history, each meter's state (read through the view
meter_status, written to meter_status_stored where the history does not hold it), the
exactly-once bookkeeping (worker_progress: the current epoch; worker_epochs: earlier ones) and
the dead letters.

Text never travels in an array literal built by the driver: pg8000 leaves an element spelled
`null` unquoted, so PostgreSQL would read it as NULL. It travels as JSON that PostgreSQL
unpacks (numbers and times may go as arrays: the driver formats those itself)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

from energy_worker.adapters.postgres import Connection
from energy_worker.core import history
from energy_worker.core.domain import (
    DeadLetter,
    MeterRecord,
    MeterState,
    Row,
    Run,
    at_time,
    ms_since_1970,
)


def load_status(con: Connection) -> dict[int, MeterRecord]:
    rows = con.run(
        """
        SELECT s.meter_no, s.meter_counts, s.pulse_time_stamp, s.pulse_period,
               (extract(epoch FROM s.cor_time_stamp) * 1000)::bigint,
               s.reference_watt_consumption, s.run_index, s.upper_index,
               (extract(epoch FROM u.cor_time_stamp) * 1000)::bigint,
               s.pulses_counted, s.pulses_repeated, s.pulses_rejected
        FROM meter_status AS s
        LEFT JOIN LATERAL (  -- the latest row, as the view finds it (0010_baseline.sql says why)
            SELECT c.cor_time_stamp FROM consumption c
            WHERE c.meter_no = s.meter_no AND c.index + 0 = s.upper_index
            ORDER BY c.cor_time_stamp DESC LIMIT 1
        ) AS u ON true
        """
    )
    records = {}
    for no, counts, millis, period, at_ms, ref, run_index, latest, latest_at, *tallies in rows:
        run = None
        if run_index is not None:
            moving = latest if latest is not None and latest != run_index else None
            run = Run(ref, run_index, moving, latest_at)
        records[no] = MeterRecord(MeterState(counts, millis, period, at_ms), run, *tallies)
    return records


def load_done(con: Connection) -> dict[str, int]:
    """The last committed sequence number of each epoch (exactly-once bookkeeping): the
    current epoch's is worker_progress's, the earlier ones' are in worker_epochs."""
    return dict(
        con.run(
            """SELECT epoch, max(last_seq) FROM (
                   SELECT epoch, last_seq FROM worker_epochs
                   UNION ALL
                   SELECT epoch, last_seq FROM worker_progress WHERE id = 1 AND epoch <> '') e
               GROUP BY epoch"""
        )
    )


def load_progress_epoch(con: Connection) -> str:
    """The epoch worker_progress holds ('' before the first commit)."""
    rows = con.run("SELECT epoch FROM worker_progress WHERE id = 1")
    return str(rows[0][0]) if rows else ""


def save_done(con: Connection, done: Mapping[str, int]) -> None:
    con.run(
        """
        INSERT INTO worker_epochs (epoch, last_seq)
        SELECT key, CAST(value AS bigint) FROM json_each_text(CAST(:done AS json))
        ON CONFLICT (epoch) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
        """,
        done=json.dumps(done),
    )


def reserve_indexes(con: Connection, n: int) -> list[int]:
    """`n` new numbers from consumption's sequence, ascending. Outside a transaction this is
    one of its own, whose commit waits for the WAL on disk (the sequence's record must be
    there before any row that uses a number): reserve many at once, rarely."""
    if n == 0:
        return []
    rows = con.run(
        "SELECT nextval(pg_get_serial_sequence('consumption', 'index')) "
        "FROM generate_series(1, :n)",
        n=n,
    )
    return sorted(r[0] for r in rows)


def insert_rows(con: Connection, rows: Mapping[int, Row]) -> None:
    if not rows:
        return
    con.run(
        """
        INSERT INTO consumption (index, meter_no, watt_consumption, meter_counts, kWh,
                                 pulse_time_stamp, pulse_period, cor_time_stamp, typed_in,
                                 pulses)
        SELECT * FROM unnest(CAST(:idx AS bigint[]), CAST(:meter AS int[]),
                             CAST(:watt AS bigint[]), CAST(:counts AS bigint[]),
                             CAST(:kwh AS numeric[]), CAST(:millis AS bigint[]),
                             CAST(:period AS bigint[]), CAST(:at AS timestamptz[]),
                             CAST(:typed AS boolean[]), CAST(:pulses AS bigint[]))
        """,
        **_columns(rows),
    )


def update_rows(con: Connection, rows: Mapping[int, Row]) -> None:
    """Move rows to their latest pulse. A moved row never leaves its quarter hour
    (history.place), so it is found through the (meter_no, cor_time_stamp) index, the only
    B-tree index of the history."""
    if not rows:
        return
    slots = [history.slot(ms_since_1970(r.at)) for r in rows.values()]
    con.run(
        """
        UPDATE consumption AS c SET
            watt_consumption = u.watt, meter_counts = u.counts, kWh = u.kwh,
            pulse_time_stamp = u.millis, pulse_period = u.period, cor_time_stamp = u.at,
            typed_in = u.typed, pulses = u.pulses, time_stamp = now()
        FROM unnest(CAST(:idx AS bigint[]), CAST(:meter AS int[]), CAST(:watt AS bigint[]),
                    CAST(:counts AS bigint[]), CAST(:kwh AS numeric[]),
                    CAST(:millis AS bigint[]), CAST(:period AS bigint[]),
                    CAST(:at AS timestamptz[]), CAST(:typed AS boolean[]),
                    CAST(:pulses AS bigint[]), CAST(:after AS timestamptz[]),
                    CAST(:until AS timestamptz[]))
             AS u(idx, meter, watt, counts, kwh, millis, period, at, typed, pulses, after,
                  until)
        WHERE c.meter_no = u.meter AND c.cor_time_stamp > u.after
          AND c.cor_time_stamp <= u.until AND c.index = u.idx
        """,
        after=[at_time(slot * history.SLOT_MS) for slot in slots],
        until=[at_time((slot + 1) * history.SLOT_MS) for slot in slots],
        **_columns(rows),
    )


def _columns(rows: Mapping[int, Row]) -> dict[str, list[object]]:
    return {
        "idx": list(rows),
        "meter": [r.meter_no for r in rows.values()],
        "watt": [r.watt for r in rows.values()],
        "counts": [r.counts for r in rows.values()],
        "kwh": [r.kwh for r in rows.values()],
        "millis": [r.millis for r in rows.values()],
        "period": [r.period for r in rows.values()],
        "at": [r.at for r in rows.values()],
        "typed": [r.typed_in for r in rows.values()],
        "pulses": [r.pulses for r in rows.values()],
    }


def save_status(
    con: Connection, records: Mapping[int, MeterRecord], kwh: Mapping[int, Decimal]
) -> None:
    if not records:
        return
    con.run(
        """
        UPDATE meter_status_stored AS s SET
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
        """,
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


def insert_dead_letters(con: Connection, letters: Sequence[DeadLetter]) -> None:
    """Input that could not be used, for Grafana (the pusher prunes old ones)."""
    if not letters:
        return
    con.run(
        """
        INSERT INTO dead_letters (at, key, value, reason)
        SELECT d.at, d.key, d.value, d.reason
        FROM json_to_recordset(CAST(:letters AS json))
             AS d(at timestamptz, key text, value text, reason text)
        """,
        letters=json.dumps(
            [
                {"at": d.at.isoformat(), "key": d.key, "value": d.value, "reason": d.reason}
                for d in letters
            ]
        ),
    )


def save_progress(con: Connection, epoch: str, seq: int, backlog: int) -> None:
    con.run(
        """UPDATE worker_progress SET epoch = :epoch, last_seq = :seq, backlog = :backlog,
                  updated_at = now() WHERE id = 1""",
        epoch=epoch,
        seq=seq,
        backlog=backlog,
    )


def save_backlog(con: Connection, backlog: int) -> None:
    con.run(
        "UPDATE worker_progress SET backlog = :backlog, updated_at = now() "
        "WHERE id = 1 AND backlog IS DISTINCT FROM :backlog",
        backlog=backlog,
    )


def save_waiting(con: Connection, backlog: int) -> None:
    """Work waits that could not be committed: the backlog, leaving updated_at at the last
    commit, so that pipeline_lag (Grafana) shows a processor that is not committing."""
    con.run(
        "UPDATE worker_progress SET backlog = :backlog "
        "WHERE id = 1 AND backlog IS DISTINCT FROM :backlog",
        backlog=backlog,
    )
