"""The daily push: the readings at each local midnight, into the outbox.

At PUSH_TIME (default 00:02) local time in TZ, the readings at the midnight that ended each due
day are recorded in the outbox, oldest first, once the processor has caught up past that
midnight (no work item older than it waiting in Redis), or at the latest PUSH_HISTORY_WAIT after
the push time. After downtime every missed day is recorded. The first day pushed is the day the
pusher first started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta

from energy_worker.adapters import postgres
from energy_worker.adapters.sql import totals as store
from energy_worker.adapters.work_queue import Queues
from energy_worker.core import totals
from energy_worker.core.domain import at_time
from energy_worker.programs.pusher.settings import PushSettings
from energy_worker.programs.pusher.sheet_format import data_string

RECHECK = timedelta(seconds=30)  # while the daily push waits for the processor to catch up

log = logging.getLogger("energy_worker.programs.pusher")


class DailyPush:
    def __init__(
        self,
        session: postgres.LockedSession,
        queues: Queues,
        settings: PushSettings,
        pushing: bool,
        clock: Callable[[], datetime],
    ) -> None:
        self.session = session
        self.queues = queues
        self.settings = settings
        self.tz = settings.tz
        self.pushing = pushing  # False: no sheet URL (GOOGLE_WEBHOOK_URL); the days still advance
        self.clock = clock
        self.waiting_logged_for: date | None = None

    def record_due(self) -> datetime:
        """Record the readings of every due day in the outbox, oldest first; returns when to
        look again."""
        now = self.clock()
        con = self.session.connection()
        state = store.load_state(con)
        next_day = state.next_push_day or totals.local_day(now, self.tz)
        for day in totals.due_push_days(next_day, now, self.settings.push_time, self.tz):
            midnight = totals.day_start(day + totals.DAY, self.tz)
            if self.pushing and not self.history_complete(midnight):
                due = totals.push_due_at(day, self.settings.push_time, self.tz)
                if now < due + self.settings.history_wait:
                    if self.waiting_logged_for != day:
                        self.waiting_logged_for = day
                        log.info(
                            "push of %s waits: the processor has not caught up past midnight", day
                        )
                    return now + RECHECK
                log.warning(
                    "push of %s: the processor is still behind midnight; sending what is stored",
                    day,
                )
            with postgres.transaction(con):
                if self.pushing:
                    readings = store.readings_at(con, midnight)
                    store.record_push(
                        con,
                        f"day:{day.isoformat()}",
                        midnight,
                        data_string([kwh for _no, _name, kwh in readings]),
                        now,
                        day,
                        [(no, name) for no, name, _kwh in readings],
                    )
                store.set_next_push_day(con, day + totals.DAY)
            if self.pushing:
                log.info("readings at the end of %s queued for the Google Sheet", day)
            next_day = day + totals.DAY
        return totals.push_due_at(next_day, self.settings.push_time, self.tz)

    def history_complete(self, boundary: datetime) -> bool:
        """True when no work item taken before `boundary` still waits for the processor."""
        oldest = self.queues.oldest_waiting()
        return oldest is None or at_time(oldest) > boundary
