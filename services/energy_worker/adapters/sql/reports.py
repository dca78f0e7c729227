"""The `energy-worker` command's SQL (cli/): what it shows and what it waits for. Read only.

Times are read with the database's own clock (now()), so ages do not depend on the clock of
the machine the command runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from energy_worker.adapters.postgres import Connection


@dataclass(frozen=True)
class MeterRow:
    meter_no: int
    name: str
    pulses_per_kwh: int
    max_power_w: int
    kwh: Decimal
    counts: int
    pulses_counted: int
    last_pulse: datetime | None  # the latest pulse (a typed-in reading is none)
    last_watt: int | None  # its power; None: it carried no power reading


@dataclass(frozen=True)
class Progress:
    updated_at: datetime  # the processor's last commit (or backlog update)
    backlog: int  # work items it left waiting then
    last_seq: int


@dataclass(frozen=True)
class PushRow:
    id: int
    dedup_key: str
    reading_at: datetime
    data_string: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    status_code: int | None
    last_error: str | None
    sent_at: datetime | None


@dataclass(frozen=True)
class Pushes:
    last_sent: PushRow | None
    pending: int
    head: PushRow | None  # the oldest pending push: the one sent next, holding back the rest
    failing_since: datetime | None  # created_at of the oldest pending push that has failed


_PUSH_COLUMNS = """id, dedup_key, reading_at, data_string, created_at, attempts, next_attempt_at,
                   status_code, last_error, sent_at"""


def _push(row: list[object] | None) -> PushRow | None:
    return None if row is None else PushRow(*row)  # type: ignore[arg-type]


def clock(con: Connection) -> datetime:
    now: datetime = con.run("SELECT now()")[0][0]
    return now


def silent_after(con: Connection) -> float:
    """Seconds a meter must be quiet to count as silent (METER_SILENT_AFTER, via the set-up)."""
    rows = con.run("SELECT value FROM worker_settings WHERE name = 'meter_silent_after_s'")
    return float(rows[0][0]) if rows else 3600.0


def meters(con: Connection, numbers: list[int]) -> list[MeterRow]:
    """The given meters' state and latest pulse, in meter order (those PostgreSQL knows)."""
    rows = con.run(
        """
        SELECT m.meter_no, m.meter_name, m.pulse_per_kWh, m.max_energy, s.kWh, s.meter_counts,
               s.pulses_counted, l.cor_time_stamp, l.watt_consumption
        FROM meter_metadata m
        JOIN meter_status s ON s.meter_no = m.meter_no
        LEFT JOIN LATERAL (
            SELECT h.cor_time_stamp, h.watt_consumption FROM consumption h
            WHERE h.meter_no = m.meter_no AND NOT h.typed_in
            ORDER BY h.cor_time_stamp DESC, h.index DESC LIMIT 1
        ) l ON true
        WHERE m.meter_no = ANY(CAST(:numbers AS int[]))
        ORDER BY m.meter_no
        """,
        numbers=numbers,
    )
    return [
        MeterRow(int(no), name, int(ppk), int(max_w), Decimal(kwh), int(counts), int(counted),
                 last, None if watt is None else int(watt))
        for no, name, ppk, max_w, kwh, counts, counted, last, watt in rows
    ]  # fmt: skip


def pulses_since(con: Connection, numbers: list[int], since: datetime) -> dict[int, int]:
    """Pulses each meter counted after `since` (a local midnight), by the schema's
    meter_pulses_at. A meter with no history row at or before `since` had counted none then:
    the history keeps the last pulse before every quarter-hour boundary."""
    rows = con.run(
        """SELECT s.meter_no,
                  s.pulses_counted - COALESCE(meter_pulses_at(s.meter_no, :since), 0)
           FROM meter_status s WHERE s.meter_no = ANY(CAST(:numbers AS int[]))""",
        numbers=numbers,
        since=since,
    )
    return {int(no): int(n) for no, n in rows}


def progress(con: Connection) -> Progress | None:
    rows = con.run("SELECT updated_at, backlog, last_seq FROM worker_progress WHERE id = 1")
    if not rows:
        return None
    updated_at, backlog, last_seq = rows[0]
    return Progress(updated_at, int(backlog), int(last_seq))


def pushes(con: Connection) -> Pushes:
    last = con.run(
        f"""SELECT {_PUSH_COLUMNS} FROM push_outbox WHERE sent_at IS NOT NULL
            ORDER BY sent_at DESC, id DESC LIMIT 1"""
    )
    head = con.run(
        f"""SELECT {_PUSH_COLUMNS} FROM push_outbox WHERE sent_at IS NULL
            ORDER BY reading_at, id LIMIT 1"""
    )
    ((pending, failing_since),) = con.run(
        """SELECT count(*), min(created_at) FILTER (WHERE attempts > 0)
           FROM push_outbox WHERE sent_at IS NULL"""
    )
    return Pushes(
        _push(last[0] if last else None),
        int(pending),
        _push(head[0] if head else None),
        failing_since,
    )


def last_push_id(con: Connection) -> int:
    return int(con.run("SELECT coalesce(max(id), 0) FROM push_outbox")[0][0])


def request_after(con: Connection, after_id: int) -> PushRow | None:
    """The first `pushtogoogle` request recorded after outbox row `after_id`."""
    rows = con.run(
        f"""SELECT {_PUSH_COLUMNS} FROM push_outbox
            WHERE id > :after AND dedup_key LIKE 'request:%' ORDER BY id LIMIT 1""",
        after=after_id,
    )
    return _push(rows[0] if rows else None)


def pending_before(con: Connection, push: PushRow) -> tuple[int, PushRow | None]:
    """How many unsent pushes are sent before this one (oldest first), and the first of them."""
    rows = con.run(
        f"""SELECT {_PUSH_COLUMNS} FROM push_outbox
            WHERE sent_at IS NULL AND (reading_at, id) < (:at, :id) ORDER BY reading_at, id""",
        at=push.reading_at,
        id=push.id,
    )
    return len(rows), _push(rows[0] if rows else None)


def reading(con: Connection, meter_no: int) -> tuple[Decimal, int] | None:
    """A meter's current reading and count (meter_status)."""
    rows = con.run("SELECT kWh, meter_counts FROM meter_status WHERE meter_no = :m", m=meter_no)
    return (Decimal(rows[0][0]), int(rows[0][1])) if rows else None


def last_index(con: Connection) -> int:
    return int(con.run("SELECT coalesce(max(index), 0) FROM consumption")[0][0])


def typed_in_after(con: Connection, meter_no: int, after_index: int) -> Decimal | None:
    """The reading of the first typed-in row of the meter written after row `after_index`."""
    rows = con.run(
        """SELECT kWh FROM consumption WHERE meter_no = :m AND typed_in AND index > :after
           ORDER BY index LIMIT 1""",
        m=meter_no,
        after=after_index,
    )
    return Decimal(rows[0][0]) if rows else None


# --- energy per period (`energy-worker energy`, status's kWh today) ---------------------------


@dataclass(frozen=True)
class PeriodEnergy:
    start: datetime
    end: datetime
    meter_no: int
    kwh: Decimal  # counted by pulses, exact; typed-in readings are no energy


def use_zone(con: Connection, tz: str) -> None:
    """Days and hours in this zone (energy_per_period's periods are the session's)."""
    con.run("SELECT set_config('TimeZone', :tz, false)", tz=tz)


def energy_per_period(
    con: Connection, since: datetime, until: datetime, unit: str
) -> list[PeriodEnergy]:
    """Energy per meter per local period ('hour', 'day') overlapping [since, until), from the
    schema's energy_per_period (use_zone first); a meter without history at a period's end has
    no row for it. The period its history begins in counts from its first row."""
    rows = con.run(
        """SELECT period_start, period_end, meter_no, kwh
           FROM energy_per_period(:since, :until, :unit)""",
        since=since,
        until=until,
        unit=unit,
    )
    return [PeriodEnergy(s, e, int(no), Decimal(kwh)) for s, e, no, kwh in rows if kwh is not None]


def first_pulses(con: Connection, numbers: list[int]) -> dict[int, datetime]:
    """The meters whose history begins with a pulse (not a typed-in reading), and its time:
    that pulse starts the count and is no energy of the period it is in (what it ends began
    before the history did). One index probe per meter."""
    rows = con.run(
        """SELECT m.meter_no, f.cor_time_stamp
           FROM unnest(CAST(:numbers AS int[])) AS m(meter_no)
           CROSS JOIN LATERAL (
               SELECT c.cor_time_stamp, c.typed_in FROM consumption c
               WHERE c.meter_no = m.meter_no ORDER BY c.cor_time_stamp, c.index LIMIT 1
           ) f
           WHERE NOT f.typed_in""",
        numbers=numbers,
    )
    return {int(no): at for no, at in rows}
