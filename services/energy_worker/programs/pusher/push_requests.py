"""`pushtogoogle` requests: from Redis into the outbox, nothing lost and nothing twice.

Each request item is moved from energy-worker:push to energy-worker:push-processing (BLMOVE),
recorded in the outbox with the current readings, and only then removed; a crash in between
leaves it to be recorded at the next start (recover), and its key (epoch:seq) keeps it from
being recorded twice. Requests coalesce: one that comes while another waits on the push list
joins it (the router's script), and one recorded while another is not sent yet replaces that
one's readings (store.record_request): 200 requests during an outage are one push.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from energy_worker.adapters import logs, postgres
from energy_worker.adapters.outage import describe_error
from energy_worker.adapters.redis_client import as_bytes
from energy_worker.adapters.sql import totals as store
from energy_worker.adapters.work_queue import PREVIEW_BYTES, PUSH, PUSH_PROCESSING, Queues
from energy_worker.core import totals

# redis-py's hints ask for str where the server takes bytes as well (LREM of an item as read).
from energy_worker.core.domain import Item, printable
from energy_worker.core.keys import Kind
from energy_worker.programs.pusher.sheet_format import data_string

log = logging.getLogger("energy_worker.programs.pusher")


class PushRequests:
    def __init__(
        self,
        session: postgres.LockedSession,
        queues: Queues,
        pushing: bool,
        clock: Callable[[], datetime],
        tz: ZoneInfo,
    ) -> None:
        self.session = session
        self.tz = tz  # a request stands for the local day it is made on
        self.queues = queues
        self.r = queues.r
        self.pushing = pushing  # False: no sheet URL, requests are dropped with a log line
        self.clock = clock

    def recover(self) -> None:
        """Record what a previous run took from Redis but did not record."""
        for raw in self.r.lrange(PUSH_PROCESSING, 0, -1):
            self.handle(as_bytes(raw))

    def take(self, timeout: float) -> bool:
        """Wait up to timeout seconds for a request and record it; False if none came."""
        if timeout > 0:
            # redis-py's hint says int; BLMOVE takes seconds with a fraction (Redis 6+)
            raw = self.r.blmove(PUSH, PUSH_PROCESSING, timeout, "LEFT", "RIGHT")  # type: ignore[arg-type]
        else:
            raw = self.r.lmove(PUSH, PUSH_PROCESSING, "LEFT", "RIGHT")
        if raw is None:
            return False
        self.handle(as_bytes(raw))
        return True

    def handle(self, raw: bytes) -> None:
        """Record one item of push-processing, then remove it from there."""
        try:
            item = Item.decode(raw)
        except ValueError as exc:  # whatever the bytes (Item.decode)
            self.reject(raw, f"unreadable push item: {exc}")
            return
        if item.kind is not Kind.PUSH:
            self.reject(raw, f"a {item.kind.name} item on the push list")
            return
        if not self.pushing:
            log.info("pushtogoogle ignored: GOOGLE_WEBHOOK_URL is not set")
        else:
            now = self.clock()
            con = self.session.connection()
            readings = store.current_readings(con)
            key = f"request:{item.epoch}:{item.seq}"
            data = data_string([kwh for _no, _name, kwh in readings])
            meters = [(no, name) for no, name, _kwh in readings]
            day = totals.local_day(now, self.tz)
            try:
                recorded = store.record_request(con, key, now, data, day, meters)
            except postgres.ERRORS as exc:
                if not postgres.refused_for_data(exc):
                    raise
                # Refused for what it carries: again on every try. Isolated, not waited out.
                self.reject(raw, f"PostgreSQL refused it ({describe_error(exc)})")
                return
            if recorded:
                log.info("pushtogoogle: current readings queued for the Google Sheet")
        self.r.lrem(PUSH_PROCESSING, 1, raw)  # type: ignore[arg-type]

    def reject(self, raw: bytes, reason: str) -> None:
        log.warning("%s %s; kept in the dead-letter list", reason, logs.quoted(raw))
        value = printable(raw.decode("utf-8", "replace"), PREVIEW_BYTES)
        self.queues.dead_letter(PUSH_PROCESSING, value, printable(reason))
        self.r.lrem(PUSH_PROCESSING, 1, raw)  # type: ignore[arg-type]
