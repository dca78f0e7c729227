"""The pusher: hourly and daily totals, and the Google Sheet push. Nothing is lost.

`python -m energy_worker.programs.pusher`. Each pass of its loop, in order:

| part                      | job                                                                |
|---------------------------|--------------------------------------------------------------------|
| pusher/timetable.py       | says what is due: the totals after each local hour, the daily push  |
| pusher/totals_pass.py     | hourly and daily totals from the stored history (and, hourly, the  |
|                           | oldest dead letters deleted: store.prune_dead_letters)             |
| pusher/daily.py           | the readings at each local midnight into the outbox, at PUSH_TIME  |
| pusher/outbox.py          | sends the outbox to the sheet, oldest first, retrying with backoff |
| pusher/push_requests.py   | `pushtogoogle` requests from Redis into the outbox                 |
Its SQL is adapters/sql/totals.py; its connection holds the pusher lock
(postgres.LockedSession), so only one pusher works on a database. Idle, it blocks in Redis
(BLMOVE on the request list) until the next thing is due, at most MAX_BLOCK seconds. Time comes
from an injectable clock, so tests never wait.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import redis

from energy_worker.adapters import logs, postgres
from energy_worker.adapters.outage import Outage, describe_error
from energy_worker.adapters.sql import totals as store
from energy_worker.adapters.work_queue import Queues
from energy_worker.core import totals
from energy_worker.programs.pusher.daily import DailyPush
from energy_worker.programs.pusher.outbox import Outbox
from energy_worker.programs.pusher.push_requests import PushRequests
from energy_worker.programs.pusher.settings import PushSettings
from energy_worker.programs.pusher.sheet_client import SheetClient
from energy_worker.programs.pusher.timetable import Schedule
from energy_worker.programs.pusher.totals_pass import TotalsPass

REFUSED_RETRY = timedelta(hours=1)  # a daily push refused for its data: looked at again then
MAX_BLOCK = 10.0  # seconds in one BLMOVE at most: a dead connection or lock holder is noticed

Clock = Callable[[], datetime]
log = logging.getLogger("energy_worker.programs.pusher")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Pusher:
    def __init__(
        self,
        session: postgres.LockedSession,
        r: redis.Redis,
        settings: PushSettings,
        clock: Clock = utc_now,
    ) -> None:
        self.session = session
        self.r = r
        self.settings = settings
        self.clock = clock
        client = SheetClient(settings.sheet_url, settings.timeout) if settings.sheet_url else None
        queues = Queues(r)
        self.schedule = Schedule(settings, clock)
        self.totals = TotalsPass(session, queues, settings.tz, clock)
        self.daily = DailyPush(session, queues, settings, client is not None, clock)
        self.outbox = Outbox(session, client, settings, clock)
        self.requests = PushRequests(session, queues, client is not None, clock, settings.tz)
        self.debug = logs.DebugSwitch(log)
        self.postgres_outage = Outage("PostgreSQL", log)
        self.redis_outage = Outage("Redis", log)
        self.prepared = False
        self.refusals: dict[str, str] = {}  # part -> the refusal last logged

    def run(self) -> None:
        """Forever: one pass at a time, outages waited out with backoff."""
        self.outbox.announce()
        while True:
            try:
                self.step()
            except redis.RedisError as exc:
                self.prepared = False  # a request may be left in push-processing: recover it
                self.redis_outage.failed(exc)
            except postgres.Waiting as exc:  # the lock held, another schema: said once
                self.prepared = False
                postgres.failed(exc, self.postgres_outage)  # the connection stays for the next try
            except postgres.ERRORS as exc:
                self.prepared = False
                if postgres.is_outage(
                    exc
                ):  # a refused statement keeps the session (and the backoff)
                    self.session.close()
                postgres.failed(exc, self.postgres_outage)

    def step(self, block: bool = True) -> None:
        """One pass: do what is due, then wait for a request until the next thing is due
        (block=False: take a waiting request, if any, without waiting)."""
        self.debug.refresh(lambda: self.r.get(logs.DEBUG_KEY))
        self.session.keep_alive()
        if not self.prepared:
            self.prepare()
        self.schedule.run_pending()
        if self.schedule.totals_due:
            with self.isolated("the hourly totals"):  # tried again at the next hour
                self.totals.run()
                # Hourly too: the dead letters the processor records, newest first, capped.
                pruned = store.prune_dead_letters(self.session.connection())
                if pruned:
                    log.debug("%d old dead letter(s) deleted", pruned)
            self.schedule.totals_done()
        if self.schedule.pushes_due:
            look_again_at = self.clock() + REFUSED_RETRY
            with self.isolated("the daily push"):
                look_again_at = self.daily.record_due()
            self.schedule.pushes_checked(look_again_at)
        self.outbox.send_due()
        self.postgres_outage.succeeded()  # said before the wait, not after it
        self.requests.take(self.wake_in() if block else 0.0)
        self.redis_outage.succeeded()

    @contextlib.contextmanager
    def isolated(self, part: str) -> Iterator[None]:
        """A statement of this part refused for the data it carries is refused again on every
        try: say so (once per distinct refusal) and let the other parts go on; the part is
        tried again at its next turn, not waited out as an outage."""
        try:
            yield
        except postgres.ERRORS as exc:
            if not postgres.refused_for_data(exc):
                raise
            text = describe_error(exc)
            if self.refusals.get(part) != text:
                self.refusals[part] = text
                log.error("PostgreSQL refused %s (%s); tried again at its next turn", part, text)
            return
        self.refusals.pop(part, None)

    def prepare(self) -> None:
        """At start: adopt the zone (a new one recomputes every total) and record requests a
        previous run took but did not record."""
        con = self.session.connection()
        state = store.load_state(con)
        tz = self.settings.tz
        if state.tz != tz.key:
            store.start_state(con, tz.key, totals.local_day(self.clock(), tz))
            if state.tz is not None:
                log.warning(
                    "time zone changed from %s to %s: recomputing every total", state.tz, tz.key
                )
        self.requests.recover()
        self.prepared = True

    def wake_in(self) -> float:
        """Seconds until something is due (at most MAX_BLOCK)."""
        return self.schedule.wake_in(MAX_BLOCK, self.outbox.next_retry)

    def close(self) -> None:
        self.session.close()
        self.outbox.close()
