"""The processor: turns work items into PostgreSQL history, exactly once, a few seconds at a time.

Its job, forever:
  1. every COMMIT_INTERVAL seconds (at once while a backlog waits), take what the router has
     routed: first what a crash left on the processing list, then new work;
  2. keep back what Redis may not have on disk yet (routed less than durable_after ago: a power
     cut could make Redis forget the move and hand the pulse's key out again), measured on this
     process's monotonic clock, which no clock step moves (Readiness);
  3. apply the rest to the meters in memory (ledger.plan_batch: pure arithmetic), the new rows
     numbered from indexes reserved ahead (row_indexes.py);
  4. write the result in one PostgreSQL transaction, together with the last item's
     (epoch, seq);
  5. only then drop those items from Redis.
A crash between 4 and 5 brings the same items back; their (epoch, seq) says they are already
committed, so they are skipped: nothing is lost and nothing is counted twice. One commit per
interval instead of one per pulse is what spares a Raspberry Pi's SD card (docs/CONTRACT.md,
"Durability"). History in PostgreSQL lags the pulses by at most COMMIT_INTERVAL + durable_after.
On a stop item it commits everything before it and exits 0 (the stop protocol,
docs/CONTRACT.md); on SIGTERM it commits everything routed before it and exits 143. A lost
connection is retried with backoff; the router keeps clearing keys meanwhile and the backlog
drains when it is back. A statement PostgreSQL refuses for the data it carries is not waited
out: the batch is split until the item that causes it is found, the rest is committed and that
item kept as a dead letter with the error (isolate). No item stops it: what cannot be decoded
or applied becomes a dead letter too. Only one processor works on a database (postgres.Lock).

`python -m energy_worker.programs.processor`. This file is the loop; its parts:

| part                      | job                                                                |
|---------------------------|--------------------------------------------------------------------|
| processor/state.py        | connects, takes the lock, loads the committed state; an outage or  |
|                           | a refused statement (lost_database)                                |
| processor/readiness.py    | when an item taken is on Redis's disk (step 2)                     |
| processor/commits.py      | steps 3 to 5, and the isolation of an item PostgreSQL refuses      |
| processor/row_indexes.py  | the history's row indexes, reserved ahead for step 3               |
| processor/report.py       | the dead letters and log lines of a commit                         |
| processor/__main__.py     | the program: settings, then run until a stop or SIGTERM            |
"""

from __future__ import annotations

import logging
import time

import redis

from energy_worker.adapters import logs, postgres
from energy_worker.adapters.redis_client import durable_after
from energy_worker.adapters.sql import ingest as store
from energy_worker.programs.processor.commits import Commits
from energy_worker.programs.processor.readiness import Readiness

BATCH = 5000  # items per transaction at most: a 100,000-item backlog drains in 20 of them
FINISH_GRACE = 10.0  # seconds after SIGTERM to commit what was routed before it

log = logging.getLogger("energy_worker.programs.processor")


class Processor(Commits):
    """The loop (its connections and state: state.State; the commit path: commits.Commits)."""

    def run(self) -> bool:
        """Process until a stop item is committed (True) or SIGTERM has come and what was
        routed before it is committed, as far as PostgreSQL lets us (False)."""
        while not self.termination.requested:
            if self.run_once():
                return True
        return self.finish()

    def run_once(self) -> bool:
        """One step: connect if need be, then commit what is due, or wait for it. True once a
        stop item is committed."""
        if not self.connected() or not self.keep_alive():
            return False  # PostgreSQL out of reach or the lock held: its backoff was the wait
        taken = self.take()
        if taken is None:  # Redis out of reach: its backoff was the wait
            return False
        raw, backlog, readiness = taken
        if not raw:
            self.idle()
            return False
        items, positions = self.decode(raw)
        ready = readiness.ready(items)
        if ready < len(items) and not self.waited:
            # Some of it too fresh: wait until all of it is on disk (at most durable_after),
            # then commit it together; once only, so a steady flow cannot hold a commit back.
            self.waited = True
            self.cycle_start = time.monotonic()
            self.termination.sleep(readiness.wait(items[-1]))
            return False
        started = self.cycle_start if self.waited else time.monotonic()
        self.waited = False
        with self.termination.busy():
            covered = self.process(raw, items[:ready], positions, backlog)
        if covered is None:  # an outage: its backoff was the wait
            return False
        if not self.stopped and len(raw) < BATCH and not self.termination.requested:
            # Gather the next interval's pulses: a take every COMMIT_INTERVAL, the wait for
            # Redis's disk included, so the history lags by COMMIT_INTERVAL + durable_after.
            self.termination.sleep(self.commit_interval - (time.monotonic() - started))
        return self.stopped

    def keep_alive(self) -> bool:
        """Renew the processor lock's lease (postgres.LockedSession)."""
        try:
            self.session.keep_alive()
        except postgres.ERRORS as exc:
            self.lost_database(exc)
            return False
        return True

    def take(self) -> tuple[list[bytes], int, Readiness] | None:
        """The next batch from Redis (a crash's leftovers first), the backlog behind it and
        the clock of its readiness; None when Redis is out of reach."""
        try:
            if not self.sequence_checked:
                self.check_redis_sequence()
                self.sequence_checked = True
            if self.readiness is None:
                after = self.durable_after
                self.readiness = Readiness(durable_after(self.r, log) if after is None else after)
            self.debug.refresh(lambda: self.r.get(logs.DEBUG_KEY))  # under load too
            raw = self.queues.take(BATCH)
            if raw:
                self.readiness.mark(*self.queues.routed_mark())  # after the take: covers it
            backlog = self.queues.backlog() if raw else 0
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            self.sequence_checked = False  # a restarted Redis may have lost its last writes
            self.redis_outage.failed(exc)
            return None
        return raw, backlog, self.readiness

    def idle(self) -> None:
        """Nothing to do: say the backlog is empty (once), then wait for the next interval."""
        if self.saved_backlog != 0:
            try:
                store.save_backlog(self.session.connection(), 0)
                self.saved_backlog = 0
            except postgres.ERRORS as exc:
                self.lost_database(exc)
                return
        self.termination.sleep(self.commit_interval)

    def finish(self) -> bool:
        """SIGTERM has come: commit what was routed before it (the entries on the lists now),
        waiting only until Redis has it on disk (at most FINISH_GRACE), unless PostgreSQL is
        out of reach: then exit at once, since the items wait in Redis for the next start.
        True when a stop was among them."""
        deadline = time.monotonic() + (self.durable_after or 0.0) + FINISH_GRACE
        try:
            mine = self.queues.backlog()
        except redis.RedisError:
            return False
        while mine > 0 and self.session.is_open and time.monotonic() < deadline:
            try:
                raw = self.queues.take(min(BATCH, mine))
                if raw and self.readiness is not None:
                    self.readiness.mark(*self.queues.routed_mark())
                backlog = self.queues.backlog() if raw else 0
            except redis.RedisError:
                return False
            if not raw:
                return False
            items, positions = self.decode(raw)
            ready = self.readiness.ready(items) if self.readiness is not None else len(items)
            if ready == 0 and items and self.readiness is not None:
                time.sleep(self.readiness.wait(items[0]))
                continue
            with self.termination.busy():
                covered = self.process(raw, items[:ready], positions, backlog)
            if covered is None:
                return False
            if self.stopped:
                return True
            mine -= covered
        return False
