"""Sending the outbox to the Google Sheet's web app.

The outbox is sent oldest first, one request at a time with a bounded timeout; a failure (no
answer within PUSH_TIMEOUT, connection refused, a TLS error, any non-2xx status, a script's
`ERROR: ...` or an HTML page: sheet_answer.py) is recorded with the answer's first line, shown
by `energy-worker push` and `status`, and retried after 30 s, doubling up to 15 min, and holds
back everything newer, so a sheet out of reach for days gets every missed day in order. A push
that succeeded is marked sent with its status and never sent again. A request whose answer never
came (or whose redirect could not be followed) may have reached the sheet: it is sent again with
the same id (sheet_format.fields), and the Apps Script (docs/google-apps-script/Code.gs) writes an
id once, so a retry makes no second row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from energy_worker.adapters import postgres
from energy_worker.adapters.sql import totals as store
from energy_worker.core import totals
from energy_worker.core.domain import printable
from energy_worker.programs.pusher import sheet_format
from energy_worker.programs.pusher.settings import PushSettings
from energy_worker.programs.pusher.sheet_client import SheetClient

log = logging.getLogger("energy_worker.programs.pusher")
ERROR_CHARS = 300  # of a failed push's answer, kept in push_outbox.last_error


class Outbox:
    def __init__(
        self,
        session: postgres.LockedSession,
        client: SheetClient | None,
        settings: PushSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.session = session
        self.client = client
        self.settings = settings
        self.clock = clock
        self.next_retry: datetime | None = None
        self.failing = False

    def announce(self) -> None:
        if self.client is None:
            log.warning("GOOGLE_WEBHOOK_URL is not set: totals only, no pushes to the Google Sheet")
        else:
            log.info(
                "pushing to %s daily at %s %s; totals hourly",
                self.client.shown,
                self.settings.push_time.strftime("%H:%M"),
                self.settings.tz.key,
            )

    def send_due(self) -> None:
        """Send the outbox oldest first until it is empty or a push fails."""
        if self.client is None:
            return
        con = self.session.connection()
        while True:
            pending = store.next_pending(con)
            now = self.clock()
            if pending is None or pending.next_attempt_at > now:
                self.next_retry = pending.next_attempt_at if pending else None
                return
            answer = self.client.send(pending.data_string, self.fields(pending))
            done = self.clock()
            what = describe(pending, self.settings.tz)
            if answer.ok:
                assert answer.status is not None
                store.mark_sent(con, pending.id, answer.status, done)
                if self.failing:
                    log.warning("the Google Sheet answers again")
                self.failing = False
                log.info("pushed %s to the Google Sheet: %s", what, answer.describe())
                continue
            delay = min(
                self.settings.retry_first * 2 ** min(pending.attempts, 30), self.settings.retry_max
            )
            retry_at = done + timedelta(seconds=delay)
            # The answer is the server's text: printable and bounded before it is stored.
            error = printable(answer.describe(), ERROR_CHARS)
            store.mark_failed(con, pending.id, answer.status, error, retry_at)
            self.failing = True
            log.warning(
                "push of %s to %s failed (%s, attempt %d); next attempt in %.0f s",
                what,
                self.client.shown,
                answer.describe(),
                pending.attempts + 1,
                delay,
            )
            self.next_retry = retry_at
            return

    def fields(self, pending: store.PendingPush) -> str:
        """What the push carries besides the readings (sheet_format.fields): its id, the day it
        stands for, the instant of its readings in TZ, and its meters."""
        tz = self.settings.tz
        day = pending.day or totals.local_day(pending.reading_at, tz)
        return sheet_format.fields(
            pending.push_id, day, pending.reading_at.astimezone(tz), pending.meters
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def describe(pending: store.PendingPush, tz: ZoneInfo) -> str:
    if pending.dedup_key.startswith("day:"):
        return f"the readings at the end of {pending.dedup_key[4:]}"
    local = pending.reading_at.astimezone(tz).isoformat(timespec="seconds")
    return f"the readings requested at {local}"
