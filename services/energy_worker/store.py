"""All SQL that reads or writes data (the schema itself is sql/schema.sql).

Batches go as arrays through unnest(), so one statement writes any number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pg8000.native

from .config import Meter
from .history import Run
from .meter import MeterState

Connection = pg8000.native.Connection
EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


# --- meters -----------------------------------------------------------------------------------


def upsert_meters(con: Connection, meters: dict[int, Meter]) -> None:
    """Apply the meter config: metadata follows the file; counts are never touched."""
    con.run(
        """
        INSERT INTO meter_metadata
            (meter_no, meter_name, pulse_per_kWh, max_energy, deviation_pct, power_factor)
        SELECT * FROM unnest(CAST(:no AS int[]), CAST(:name AS text[]), CAST(:ppk AS int[]),
                             CAST(:max AS int[]), CAST(:dev AS numeric[]), CAST(:pf AS numeric[]))
        ON CONFLICT (meter_no) DO UPDATE SET
            meter_name = EXCLUDED.meter_name, pulse_per_kWh = EXCLUDED.pulse_per_kWh,
            max_energy = EXCLUDED.max_energy, deviation_pct = EXCLUDED.deviation_pct,
            power_factor = EXCLUDED.power_factor
        """,
        no=[m.number for m in meters.values()],
        name=[m.name for m in meters.values()],
        ppk=[m.pulses_per_kwh for m in meters.values()],
        max=[m.max_power_w for m in meters.values()],
        dev=[m.deviation_pct for m in meters.values()],
        pf=[m.power_factor for m in meters.values()],
    )
    con.run(
        """
        INSERT INTO meter_status (meter_no)
        SELECT unnest(CAST(:no AS int[])) ON CONFLICT (meter_no) DO NOTHING
        """,
        no=list(meters),
    )


def load_meters(con: Connection) -> dict[int, Meter]:
    rows = con.run(
        """SELECT meter_no, meter_name, pulse_per_kWh, max_energy, deviation_pct, power_factor
           FROM meter_metadata ORDER BY meter_no"""
    )
    return {
        no: Meter(no, name, ppk, max_w, Decimal(dev), Decimal(pf))
        for no, name, ppk, max_w, dev, pf in rows
    }


# --- processor state --------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterRecord:
    """What meter_status holds for one meter: its arithmetic state and its current run."""

    state: MeterState
    run: Run | None
    upper_index: int | None
    counted: int = 0  # pulses counted since the meter was configured
    repeated: int = 0  # pulses delivered twice
    rejected: int = 0  # power readings above the meter's maximum


def load_status(con: Connection) -> dict[int, MeterRecord]:
    rows = con.run(
        """
        SELECT meter_no, meter_counts, pulse_time_stamp, pulse_period,
               (extract(epoch FROM cor_time_stamp) * 1000)::bigint,
               reference_watt_consumption, run_index, upper_index,
               pulses_counted, pulses_repeated, pulses_rejected
        FROM meter_status
        """
    )
    records = {}
    for no, counts, millis, period, at_ms, ref, run_index, upper, *tallies in rows:
        run = None
        if run_index is not None:
            second = upper if upper is not None and upper != run_index else None
            run = Run(ref, run_index, second)
        records[no] = MeterRecord(MeterState(counts, millis, period, at_ms), run, upper, *tallies)
    return records


def load_progress(con: Connection) -> tuple[str, int]:
    ((epoch, seq),) = con.run("SELECT epoch, last_seq FROM worker_progress WHERE id = 1")
    return epoch, seq


@dataclass
class Row:
    """A consumption row as the processor builds it."""

    meter_no: int
    watt: int | None
    counts: int
    kwh: Decimal
    millis: int | None
    period: int
    at: datetime


def allocate_indexes(con: Connection, n: int) -> list[int]:
    if n == 0:
        return []
    rows = con.run(
        "SELECT nextval(pg_get_serial_sequence('consumption', 'index')) "
        "FROM generate_series(1, :n)",
        n=n,
    )
    return [r[0] for r in rows]


def insert_rows(con: Connection, rows: dict[int, Row]) -> None:
    if not rows:
        return
    con.run(
        """
        INSERT INTO consumption (index, meter_no, watt_consumption, meter_counts, kWh,
                                 pulse_time_stamp, pulse_period, cor_time_stamp)
        SELECT * FROM unnest(CAST(:idx AS bigint[]), CAST(:meter AS int[]),
                             CAST(:watt AS bigint[]), CAST(:counts AS bigint[]),
                             CAST(:kwh AS numeric[]), CAST(:millis AS bigint[]),
                             CAST(:period AS bigint[]), CAST(:at AS timestamptz[]))
        """,
        **_columns(rows),
    )


def update_rows(con: Connection, rows: dict[int, Row]) -> None:
    if not rows:
        return
    con.run(
        """
        UPDATE consumption AS c SET
            watt_consumption = u.watt, meter_counts = u.counts, kWh = u.kwh,
            pulse_time_stamp = u.millis, pulse_period = u.period, cor_time_stamp = u.at,
            time_stamp = now()
        FROM unnest(CAST(:idx AS bigint[]), CAST(:meter AS int[]), CAST(:watt AS bigint[]),
                    CAST(:counts AS bigint[]), CAST(:kwh AS numeric[]),
                    CAST(:millis AS bigint[]), CAST(:period AS bigint[]),
                    CAST(:at AS timestamptz[]))
             AS u(idx, meter, watt, counts, kwh, millis, period, at)
        WHERE c.index = u.idx
        """,
        **_columns(rows),
    )


def _columns(rows: dict[int, Row]) -> dict[str, list[object]]:
    return {
        "idx": list(rows),
        "meter": [r.meter_no for r in rows.values()],
        "watt": [r.watt for r in rows.values()],
        "counts": [r.counts for r in rows.values()],
        "kwh": [r.kwh for r in rows.values()],
        "millis": [r.millis for r in rows.values()],
        "period": [r.period for r in rows.values()],
        "at": [r.at for r in rows.values()],
    }


def save_status(con: Connection, records: dict[int, MeterRecord], kwh: dict[int, Decimal]) -> None:
    if not records:
        return
    con.run(
        """
        UPDATE meter_status AS s SET
            meter_counts = u.counts, kWh = u.kwh, pulse_time_stamp = u.millis,
            pulse_period = u.period, cor_time_stamp = u.at,
            reference_watt_consumption = u.ref, run_index = u.run_index,
            upper_index = u.upper, pulses_counted = u.counted,
            pulses_repeated = u.repeated, pulses_rejected = u.rejected, time_stamp = now()
        FROM unnest(CAST(:meter AS int[]), CAST(:counts AS bigint[]), CAST(:kwh AS numeric[]),
                    CAST(:millis AS bigint[]), CAST(:period AS bigint[]),
                    CAST(:at AS timestamptz[]), CAST(:ref AS bigint[]),
                    CAST(:run_index AS bigint[]), CAST(:upper AS bigint[]),
                    CAST(:counted AS bigint[]), CAST(:repeated AS bigint[]),
                    CAST(:rejected AS bigint[]))
             AS u(meter, counts, kwh, millis, period, at, ref, run_index, upper, counted,
                  repeated, rejected)
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
        upper=[r.upper_index for r in records.values()],
        counted=[r.counted for r in records.values()],
        repeated=[r.repeated for r in records.values()],
        rejected=[r.rejected for r in records.values()],
    )


def at_time(at_ms: int) -> datetime:
    """A wall time in ms since 1970 (as the router stamps items) as a datetime, exactly."""
    return EPOCH_START + timedelta(milliseconds=at_ms)


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


def try_processor_lock(con: Connection) -> bool:
    """Only one processor may work on a database: a session-level advisory lock says which."""
    ((got,),) = con.run("SELECT pg_try_advisory_lock(hashtext('energy-worker processor'))")
    return bool(got)
