"""Hourly and daily totals, read from the stored history.

A meter's reading at a boundary is read from the history (its latest consumption row at or
before the boundary), never from the state at the moment the job runs. Each pass computes the
hours and days closed since the last one (all of those missed while the pusher was down), and
recomputes only those whose history may have changed since: from the earliest row inserted
since (index above the last pass's; a backlog processed late lands in the past), and from where
each row stood that the processor could still move at the last pass. Only a deadband run's
moving row is ever moved, and only within its quarter hour (history.py), so such a row can
change readings from its own position on; once every pulse stamped before its quarter hour's
end is committed (nothing older waits in Redis, and the quarter hour ended ROUTE_MARGIN ago) it
can no longer move. A meter that is quiet, or whose run started long ago, costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from energy_worker.adapters import postgres
from energy_worker.adapters.sql import totals as store
from energy_worker.adapters.work_queue import Queues
from energy_worker.core import history, totals
from energy_worker.core.domain import EPOCH_START, at_time, ms_since_1970

CHUNK_HOURS = 24 * 7  # hours per statement in a long backfill
# A pulse reaches Redis within this long of the router stamping it (same host: milliseconds).
ROUTE_MARGIN = timedelta(seconds=60)
SLOT = timedelta(milliseconds=history.SLOT_MS)

log = logging.getLogger("energy_worker.programs.pusher")


class TotalsPass:
    def __init__(
        self,
        session: postgres.LockedSession,
        queues: Queues,
        tz: ZoneInfo,
        clock: Callable[[], datetime],
    ) -> None:
        self.session = session
        self.queues = queues
        self.tz = tz
        self.clock = clock

    def run(self) -> None:
        """Compute the hours and days closed since the last pass, and recompute those whose
        history may have changed since (module doc)."""
        now = self.clock()
        settled = self.settled_until(now)  # before reading PostgreSQL: see settled_until
        con = self.session.connection()
        state = store.load_state(con)
        new_from, max_index, movable = store.history_changes(con, state.seen_index)
        # Rows that may still move before the next pass; a row at a quarter-hour boundary
        # itself also changes the hour that ends there, hence the microsecond before it.
        open_rows = [t for t in movable if slot_end(t) >= settled]  # its end included
        running_from = min(open_rows) - timedelta(microseconds=1) if open_rows else None
        until = totals.hour_floor(now, self.tz)
        done_until = state.totals_until
        if done_until is None:
            since = store.first_history(con)
        else:
            since = min(t for t in (done_until, state.recompute_from, new_from) if t)
        if since is not None:
            self.compute(con, min(since, until), done_until, now)
        store.save_totals_state(con, max_index, running_from, until)

    def compute(
        self, con: postgres.Connection, since: datetime, done_until: datetime | None, now: datetime
    ) -> None:
        tz = self.tz
        hours = [(s, e, totals.local_day(s, tz)) for s, e in totals.closed_hours(since, now, tz)]
        days = [(d, *totals.day_bounds(d, tz)) for d in totals.closed_days(since, now, tz)]
        # Those that ended by done_until were computed before: a write there corrects one.
        old_hours = [h for h in hours if done_until is not None and h[1] <= done_until]
        old_days = [d for d in days if done_until is not None and d[2] <= done_until]

        def write_hours(part: list[tuple[datetime, datetime, date]]) -> int:
            return store.upsert_hours(con, part, now)

        def write_days(part: list[tuple[date, datetime, datetime]]) -> int:
            return store.upsert_days(con, part, now)

        corrected = in_chunks(write_hours, old_hours, CHUNK_HOURS) + in_chunks(
            write_days, old_days, CHUNK_HOURS // 24
        )
        in_chunks(write_hours, hours[len(old_hours) :], CHUNK_HOURS)
        in_chunks(write_days, days[len(old_days) :], CHUNK_HOURS // 24)
        if corrected:
            log.info(
                "history changed back to %s: %d total(s) corrected (%d hour(s) and "
                "%d day(s) recomputed)",
                since.astimezone(tz).isoformat(timespec="seconds"),
                corrected,
                len(old_hours),
                len(old_days),
            )
        if len(hours) - len(old_hours) > 1:
            log.info(
                "totals filled in for %d hour(s) and %d day(s)",
                len(hours) - len(old_hours),
                len(days) - len(old_days),
            )
        log.debug(
            "totals: %d hour(s) and %d day(s) computed from %s",
            len(hours),
            len(days),
            since.astimezone(tz).isoformat(timespec="seconds"),
        )

    def settled_until(self, now: datetime) -> datetime:
        """An instant before which every pulse is committed to PostgreSQL: the oldest work item
        still waiting in Redis, at most now - ROUTE_MARGIN. Read before the history: an item
        the processor commits in between is then already gone from Redis, and in the history."""
        oldest = self.queues.oldest_waiting()
        settled = now - ROUTE_MARGIN
        return settled if oldest is None else min(settled, at_time(oldest))


def in_chunks(write: Callable[[list[Any]], int], rows: list[Any], size: int) -> int:
    """write(rows) a chunk at a time; returns the sum of what it returns."""
    return sum(write(rows[i : i + size]) for i in range(0, len(rows), size))


def slot_end(at: datetime) -> datetime:
    """The end of the quarter hour (history.slot) that contains `at`: a row exactly at a
    boundary belongs to the quarter hour that ends there."""
    return EPOCH_START + (history.slot(ms_since_1970(at)) + 1) * SLOT
