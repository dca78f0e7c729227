"""The pusher's SQL: hourly and daily totals, the push outbox, and the pusher's own state.

A meter's reading at a boundary B is the kWh of its latest consumption row with
cor_time_stamp <= B (ties: the row written last), found through the consumption_meter_time
index, so a boundary costs one index probe per meter. The deadband stores the last pulse
before every quarter-hour boundary (history.py), so that reading is exact.

The energy of a period counts pulses only: the difference of the rows' pulse counts
(consumption.pulses) at its boundaries, divided by the pulse constant (kWh_diff). A typed-in
reading sets the meter without being energy; what it changed in the period is kWh_set, so that
kWh_start + kWh_diff + kWh_set = kWh (the readings, which the sheet receives, include it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from energy_worker.adapters.postgres import Connection

# The reading of meter m.meter_no at the instant named by the placeholder.
_READING_AT = """
    SELECT c.kWh FROM consumption c
    WHERE c.meter_no = m.meter_no AND c.cor_time_stamp <= {at}
    ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
"""


# The reading and the pulse count of meter m at the instant named by the placeholder.
_ROW_AT = """
    SELECT c.kWh, c.pulses FROM consumption c
    WHERE c.meter_no = m.meter_no AND c.cor_time_stamp <= {at}
    ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
"""
# The energy counted by pulses between rows a and z of meter m, exact (no float anywhere).
_PULSE_ENERGY = "trim_scale((z.pulses - a.pulses)::numeric / m.pulse_per_kWh)"
DEAD_LETTERS_KEPT = 10_000


@dataclass(frozen=True)
class PusherState:
    tz: str | None
    next_push_day: date | None
    seen_index: int
    recompute_from: datetime | None
    totals_until: datetime | None


@dataclass(frozen=True)
class PendingPush:
    id: int
    dedup_key: str
    reading_at: datetime
    data_string: str
    attempts: int
    next_attempt_at: datetime
    push_id: str  # the sheet's id of it: the installation's id and dedup_key, on every retry
    day: date | None  # the local day it stands for (None: recorded before schema version 9)
    meters: list[tuple[int, str]] | None  # (number, name) in data_string's order; None: ditto


def load_state(con: Connection) -> PusherState:
    rows = con.run(
        """SELECT tz, next_push_day, seen_index, recompute_from, totals_until
           FROM pusher_state WHERE id = 1"""
    )
    if not rows:  # the schema inserts it; a person may have deleted it
        con.run("INSERT INTO pusher_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
        return PusherState(None, None, 0, None, None)
    tz, next_day, seen, recompute_from, until = rows[0]
    return PusherState(tz, next_day, int(seen), recompute_from, until)


def start_state(con: Connection, tz: str, first_push_day: date) -> None:
    """First start, or a new zone: set the zone and the first push day, and forget every total
    so they are all recomputed with the zone's boundaries."""
    con.run(
        """UPDATE pusher_state SET tz = :tz, next_push_day = COALESCE(next_push_day, :day),
               seen_index = 0, recompute_from = NULL, totals_until = NULL, updated_at = now()
           WHERE id = 1""",
        tz=tz,
        day=first_push_day,
    )


def history_changes(
    con: Connection, seen_index: int
) -> tuple[datetime | None, int, list[datetime]]:
    """What may have changed since the last pass, in one snapshot: the earliest time of a row
    written since seen_index, the highest index now, and the time of every row the processor
    may still move (a deadband run's second row, which is its meter's latest row). A row is
    only ever moved within its quarter hour (history.py), so a pass need not look further
    back than where these rows are."""
    ((new_from, max_index, movable),) = con.run(
        """SELECT (SELECT min(cor_time_stamp) FROM consumption WHERE index > :seen),
                  (SELECT max(index) FROM consumption WHERE index > :seen),
                  ARRAY(SELECT u.cor_time_stamp FROM meter_status s
                        CROSS JOIN LATERAL (
                            SELECT c.cor_time_stamp FROM consumption c
                            WHERE c.meter_no = s.meter_no AND c.index = s.upper_index
                            ORDER BY c.cor_time_stamp DESC LIMIT 1) u
                        WHERE s.run_index IS NOT NULL AND s.upper_index <> s.run_index)""",
        seen=seen_index,
    )
    latest = int(max_index) if max_index is not None else seen_index
    return new_from, max(latest, seen_index), list(movable or [])


def first_history(con: Connection) -> datetime | None:
    first: datetime | None = con.run("SELECT min(cor_time_stamp) FROM consumption")[0][0]
    return first


def upsert_hours(
    con: Connection, hours: list[tuple[datetime, datetime, date]], now: datetime
) -> int:
    """Compute and store the hourly totals of every meter for the given (start, end, day);
    returns how many rows were written (new, or changed)."""
    if not hours:
        return 0
    con.run(
        f"""
        INSERT INTO meter_hourly_totals AS t
            (hour_start, meter_no, hour_end, day, kWh_start, kWh, kWh_diff, kWh_set,
             computed_at)
        SELECT h.s, m.meter_no, h.e, h.d, a.kWh, z.kWh, p.diff, z.kWh - a.kWh - p.diff, :now
        FROM unnest(CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]),
                    CAST(:days AS date[])) AS h(s, e, d)
        CROSS JOIN meter_metadata m
        LEFT JOIN LATERAL ({_ROW_AT.format(at="h.s")}) a ON true
        LEFT JOIN LATERAL ({_ROW_AT.format(at="h.e")}) z ON true
        CROSS JOIN LATERAL (SELECT {_PULSE_ENERGY} AS diff) p
        ON CONFLICT (meter_no, hour_start) DO UPDATE SET
            hour_end = EXCLUDED.hour_end, day = EXCLUDED.day, kWh_start = EXCLUDED.kWh_start,
            kWh = EXCLUDED.kWh, kWh_diff = EXCLUDED.kWh_diff, kWh_set = EXCLUDED.kWh_set,
            computed_at = EXCLUDED.computed_at
        WHERE (t.hour_end, t.day, t.kWh_start, t.kWh, t.kWh_diff, t.kWh_set)
              IS DISTINCT FROM (EXCLUDED.hour_end, EXCLUDED.day, EXCLUDED.kWh_start,
                                EXCLUDED.kWh, EXCLUDED.kWh_diff, EXCLUDED.kWh_set)
        """,
        starts=[h[0] for h in hours],
        ends=[h[1] for h in hours],
        days=[h[2] for h in hours],
        now=now,
    )
    return max(con.row_count, 0)


def upsert_days(con: Connection, days: list[tuple[date, datetime, datetime]], now: datetime) -> int:
    """Compute and store meter_daily_totals for the given (day, start, end); returns how many rows
    were written (new, or changed)."""
    if not days:
        return 0
    con.run(
        f"""
        INSERT INTO meter_daily_totals AS t
            (day, meter_no, day_start, day_end, kWh_start, kWh, kWh_diff, kWh_set, computed_at)
        SELECT d.d, m.meter_no, d.s, d.e, a.kWh, z.kWh, p.diff, z.kWh - a.kWh - p.diff, :now
        FROM unnest(CAST(:days AS date[]), CAST(:starts AS timestamptz[]),
                    CAST(:ends AS timestamptz[])) AS d(d, s, e)
        CROSS JOIN meter_metadata m
        LEFT JOIN LATERAL ({_ROW_AT.format(at="d.s")}) a ON true
        LEFT JOIN LATERAL ({_ROW_AT.format(at="d.e")}) z ON true
        CROSS JOIN LATERAL (SELECT {_PULSE_ENERGY} AS diff) p
        ON CONFLICT (day, meter_no) DO UPDATE SET
            day_start = EXCLUDED.day_start, day_end = EXCLUDED.day_end,
            kWh_start = EXCLUDED.kWh_start, kWh = EXCLUDED.kWh, kWh_diff = EXCLUDED.kWh_diff,
            kWh_set = EXCLUDED.kWh_set, computed_at = EXCLUDED.computed_at
        WHERE (t.day_start, t.day_end, t.kWh_start, t.kWh, t.kWh_diff, t.kWh_set)
              IS DISTINCT FROM (EXCLUDED.day_start, EXCLUDED.day_end, EXCLUDED.kWh_start,
                                EXCLUDED.kWh, EXCLUDED.kWh_diff, EXCLUDED.kWh_set)
        """,
        days=[d[0] for d in days],
        starts=[d[1] for d in days],
        ends=[d[2] for d in days],
        now=now,
    )
    return max(con.row_count, 0)


def prune_dead_letters(con: Connection, keep: int = DEAD_LETTERS_KEPT) -> int:
    """Keep the newest `keep` dead letters; returns how many older ones were deleted."""
    con.run(
        """DELETE FROM dead_letters WHERE id <= (SELECT id FROM dead_letters
                                              ORDER BY id DESC OFFSET :keep LIMIT 1)""",
        keep=keep,
    )
    return max(con.row_count, 0)


def save_totals_state(
    con: Connection, seen_index: int, recompute_from: datetime | None, totals_until: datetime
) -> None:
    con.run(
        """UPDATE pusher_state SET seen_index = :seen, recompute_from = :rf,
               totals_until = :until, updated_at = now() WHERE id = 1""",
        seen=seen_index,
        rf=recompute_from,
        until=totals_until,
    )


def readings_at(con: Connection, at: datetime) -> list[tuple[int, str, Decimal | None]]:
    """Every configured meter's number, name and reading at an instant, in meter order."""
    rows = con.run(
        f"""SELECT m.meter_no, m.meter_name, ({_READING_AT.format(at=":at")})
            FROM meter_metadata m ORDER BY m.meter_no""",
        at=at,
    )
    return [(int(no), name, kwh) for no, name, kwh in rows]


def current_readings(con: Connection) -> list[tuple[int, str, Decimal | None]]:
    """Every configured meter's number, name and current reading (meter_status), in meter
    order."""
    rows = con.run(
        """SELECT m.meter_no, m.meter_name, s.kWh FROM meter_metadata m
           LEFT JOIN meter_status s ON s.meter_no = m.meter_no ORDER BY m.meter_no"""
    )
    return [(int(no), name, kwh) for no, name, kwh in rows]


def record_push(
    con: Connection,
    dedup_key: str,
    reading_at: datetime,
    data: str,
    now: datetime,
    day: date | None = None,
    meters: list[tuple[int, str]] | None = None,
) -> bool:
    """Put a push in the outbox, with the day it stands for and its meters (number, name) in
    data's order (None: sent without; the outbox then takes the day from reading_at); False if
    one with this key was recorded before."""
    rows = con.run(
        """INSERT INTO push_outbox (dedup_key, reading_at, data_string, created_at,
                                    next_attempt_at, day, meter_nos, meter_names)
           VALUES (:key, :at, :data, :now, :now, :day, CAST(:nos AS integer[]),
                   -- names as JSON: the driver's array literal leaves null and quotes bare
                   (SELECT array_agg(n.name ORDER BY n.i)
                    FROM json_array_elements_text(CAST(:names AS json))
                         WITH ORDINALITY AS n(name, i)))
           ON CONFLICT (dedup_key) DO NOTHING RETURNING id""",
        key=dedup_key,
        at=reading_at,
        data=data,
        now=now,
        day=day,
        nos=None if meters is None else [number for number, _name in meters],
        names=None if meters is None else json.dumps([name for _number, name in meters]),
    )
    return bool(rows)


def record_request(
    con: Connection,
    dedup_key: str,
    reading_at: datetime,
    data: str,
    day: date | None = None,
    meters: list[tuple[int, str]] | None = None,
) -> bool:
    """Put a `pushtogoogle` request in the outbox, or join it to a request not sent yet (the
    webhook failing): pending requests are one push of the newest readings, keeping its
    attempts and backoff, under this request's key and a new id (so that `energy-worker push`
    finds it as one after its own), with this request's day and meters (record_push). False if
    one with this key was recorded before."""
    rows = con.run(
        """WITH pending AS (
               SELECT id FROM push_outbox
               WHERE sent_at IS NULL AND dedup_key LIKE 'request:%'
                 AND NOT EXISTS (SELECT 1 FROM push_outbox WHERE dedup_key = :key)
               ORDER BY id DESC LIMIT 1
           ), names AS (
               -- names as JSON: the driver's array literal leaves null and quotes bare
               SELECT array_agg(n.name ORDER BY n.i) AS names
               FROM json_array_elements_text(CAST(:names AS json)) WITH ORDINALITY AS n(name, i)
           ), joined AS (
               UPDATE push_outbox o
               SET id = nextval(pg_get_serial_sequence('push_outbox', 'id')), dedup_key = :key,
                   reading_at = :at, data_string = :data, day = :day,
                   meter_nos = CAST(:nos AS integer[]), meter_names = (SELECT names FROM names)
               FROM pending WHERE o.id = pending.id RETURNING o.id
           ), added AS (
               INSERT INTO push_outbox (dedup_key, reading_at, data_string, created_at,
                                        next_attempt_at, day, meter_nos, meter_names)
               SELECT :key, :at, :data, :at, :at, :day, CAST(:nos AS integer[]),
                      (SELECT names FROM names)
               WHERE NOT EXISTS (SELECT 1 FROM pending)
               ON CONFLICT (dedup_key) DO NOTHING RETURNING id
           )
           SELECT id FROM joined UNION ALL SELECT id FROM added""",
        key=dedup_key,
        at=reading_at,
        data=data,
        day=day,
        nos=None if meters is None else [number for number, _name in meters],
        names=None if meters is None else json.dumps([name for _number, name in meters]),
    )
    return bool(rows)


def set_next_push_day(con: Connection, day: date) -> None:
    con.run(
        "UPDATE pusher_state SET next_push_day = :day, updated_at = now() WHERE id = 1", day=day
    )


def next_pending(con: Connection) -> PendingPush | None:
    """The oldest push not yet answered 2xx."""
    rows = con.run(
        """SELECT o.id, o.dedup_key, o.reading_at, o.data_string, o.attempts, o.next_attempt_at,
                  concat_ws(':', (SELECT i.id FROM installation i LIMIT 1), o.dedup_key),
                  o.day, o.meter_nos, o.meter_names
           FROM push_outbox o WHERE o.sent_at IS NULL ORDER BY o.reading_at, o.id LIMIT 1"""
    )
    if not rows:
        return None
    pid, key, at, data, attempts, next_at, push_id, day, nos, names = rows[0]
    meters = None
    if nos is not None:
        names = names or []
        meters = [(int(n), str(names[i] if i < len(names) else "")) for i, n in enumerate(nos)]
    return PendingPush(int(pid), key, at, data, int(attempts), next_at, push_id, day, meters)


def mark_sent(con: Connection, push_id: int, status: int, now: datetime) -> None:
    con.run(
        """UPDATE push_outbox SET sent_at = :now, status_code = :status, last_error = NULL,
               attempts = attempts + 1 WHERE id = :id""",
        id=push_id,
        status=status,
        now=now,
    )


def mark_failed(
    con: Connection, push_id: int, status: int | None, error: str, next_attempt_at: datetime
) -> None:
    con.run(
        """UPDATE push_outbox SET status_code = :status, last_error = :error,
               attempts = attempts + 1, next_attempt_at = :next WHERE id = :id""",
        id=push_id,
        status=status,
        error=error,
        next=next_attempt_at,
    )
