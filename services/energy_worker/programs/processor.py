"""The processor: turns work items into PostgreSQL history, exactly once, a few seconds at a time.

Its job, forever:
  1. every COMMIT_INTERVAL seconds (at once while a backlog waits), take what the router has
     routed: first what a crash left on the processing list, then new work;
  2. keep back what Redis may not have on disk yet (routed less than durable_after ago: a power
     cut could make Redis forget the move and hand the pulse's key out again), measured on this
     process's monotonic clock, which no clock step moves (Readiness);
  3. apply the rest to the meters in memory (ledger.plan_batch: pure arithmetic);
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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable

import redis

from energy_worker.adapters import config, logs, postgres, schema
from energy_worker.adapters.config import COMMIT_INTERVAL
from energy_worker.adapters.outage import Outage, describe_error
from energy_worker.adapters.redis_client import connect_redis, durable_after
from energy_worker.adapters.sql import ingest as store
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.adapters.work_queue import PREVIEW_BYTES, PROCESSING, Queues
from energy_worker.core import ledger
from energy_worker.core.domain import Item, Meter, MeterRecord, printable
from energy_worker.runtime import program

BATCH = 5000  # items per transaction at most: a 100,000-item backlog drains in 20 of them
FINISH_GRACE = 10.0  # seconds after SIGTERM to commit what was routed before it

log = logging.getLogger("energy_worker.programs.processor")


class Readiness:
    """How long items have been in Redis, on this process's monotonic clock: wall-clock stamps
    (`at`) stay for the history, never for this decision, so no clock step (NTP on a Pi without
    a real-time clock, a time set by hand) holds an item back longer than durable_after.

    After each take the processor notes Redis's latest (epoch, seq) and when it read it (mark):
    every item taken was routed by then. An item is ready once a mark that covers it is
    durable_after old, so a backlog found at start waits durable_after once, not per batch. An
    item no mark covers (an older epoch) is timed from when this process first saw it."""

    def __init__(self, durable_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.durable_after = durable_after
        self.clock = clock
        self.marks: deque[tuple[float, str | None, int]] = deque()
        self.first_seen: dict[tuple[str, int], float] = {}

    def mark(self, epoch: str | None, seq: int) -> None:
        now = self.clock()
        self.marks.append((now, epoch, seq))
        # Only the newest durable mark, and those still to become durable, are of use.
        while len(self.marks) > 1 and self.marks[1][0] <= now - self.durable_after:
            self.marks.popleft()

    def since(self, item: Item, now: float) -> float:
        """When `item` was in Redis at the latest, on the monotonic clock (`now`: first seen)."""
        for at, epoch, seq in self.marks:
            if epoch == item.epoch and item.seq <= seq:
                return at
        return self.first_seen.setdefault((item.epoch, item.seq), now)

    def ready(self, items: list[Item]) -> int:
        """How many items, from the head, Redis has on disk by now."""
        now = self.clock()
        for position, item in enumerate(items):
            if self.since(item, now) > now - self.durable_after:
                self.forget(items)
                return position
        self.forget(items)
        return len(items)

    def wait(self, item: Item) -> float:
        """Seconds until `item` is ready: at most durable_after."""
        now = self.clock()
        return min(max(self.since(item, now) + self.durable_after - now, 0.01), self.durable_after)

    def forget(self, items: list[Item]) -> None:
        """Keep first sightings of the items still in hand only (bounded by a batch)."""
        if self.first_seen:
            current = {(item.epoch, item.seq) for item in items}
            self.first_seen = {k: v for k, v in self.first_seen.items() if k in current}


class Processor:
    def __init__(
        self,
        r: redis.Redis,
        pg: config.PostgresSettings,
        config_meters: dict[int, Meter],
        *,
        termination: program.Termination | None = None,
        lease: float = postgres.LEASE,
        db_timeout: float = postgres.TIMEOUT,
        commit_interval: float = COMMIT_INTERVAL,
        durable_after: float | None = None,
    ) -> None:
        self.r = r
        self.queues = Queues(r)
        self.pg = pg
        self.config_meters = config_meters
        self.termination = termination or program.Termination(deferred=True)
        self.commit_interval = commit_interval
        self.durable_after = durable_after  # None: ask Redis (redis_client.durable_after)
        self.session = postgres.LockedSession(
            lambda name: postgres.connect(pg, name, db_timeout), "processor", lease
        )
        # The committed state, as PostgreSQL holds it.
        self.meters: dict[int, Meter] = {}
        self.records: dict[int, MeterRecord] = {}
        self.done: dict[str, int] = {}  # last committed seq per epoch
        self.progress_epoch = ""  # the epoch worker_progress holds
        self.saved_backlog: int | None = None
        self.readiness: Readiness | None = None  # once durable_after is known
        self.schema_version: int | None = None  # applied once per process, not per connection
        self.loaded = False  # the committed state, from this session
        self.stopped = False  # the last batch ended with a stop
        self.waited = False  # for the batch in hand to be on Redis's disk
        self.cycle_start = 0.0  # monotonic: the take that began the wait
        self.done_last: int | None = None  # the last committed sequence number, for the log
        self.unreadable: dict[int, str] = {}  # the batch's entries that are no item: why
        self.sequence_checked = False
        self.debug = logs.DebugSwitch(log)
        self.pg_outage = Outage("PostgreSQL", log, sleep=self.termination.sleep)
        self.redis_outage = Outage("Redis", log, sleep=self.termination.sleep)

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
        if not self.connected():
            return False
        try:
            self.session.keep_alive()
        except postgres.ERRORS as exc:
            self.lost_database(exc)
            return False
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
            return False
        if not raw:
            self.idle()
            return False
        items, positions = self.decode(raw)
        ready = self.readiness.ready(items)
        if ready < len(items) and not self.waited:
            # Some of it too fresh: wait until all of it is on disk (at most durable_after),
            # then commit it together; once only, so a steady flow cannot hold a commit back.
            self.waited = True
            self.cycle_start = time.monotonic()
            self.termination.sleep(self.readiness.wait(items[-1]))
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

    def process(
        self, raw: list[bytes], items: list[Item], positions: list[int], backlog: int
    ) -> int | None:
        """Commit `items` (the head of `raw`), then drop them from Redis; returns how many
        entries of `raw` that took off, or None when an outage stopped it (what was committed
        comes back and is skipped). self.stopped says whether they ended with a stop."""
        self.stopped = False
        committed = 0  # of `items`
        covered = 0  # entries of `raw`
        if not items:  # unreadable entries at the head: dead letters, nothing to commit
            covered = self.entries_through(raw, positions, 0, False)
            try:
                self.report(ledger.Plan(), raw, positions, 0, covered)
            except redis.RedisError as exc:
                self.redis_outage.failed(exc)
                return None
        while committed < len(items) and not self.stopped:
            try:
                plan, end = self.commit_isolating(raw, items, positions, committed, backlog)
            except postgres.ERRORS as exc:
                if covered:
                    self.acknowledge(covered)  # what was committed before it
                self.lost_database(exc, backlog - covered)
                return None
            self.records.update(plan.records)
            self.done = plan.done
            self.stopped = plan.stop
            try:
                self.report(plan, raw, positions, covered, end)
            except redis.RedisError as exc:  # not acknowledged: it comes back, skipped as done
                self.redis_outage.failed(exc)
                return None
            committed = min(self.items_through(positions, end), len(items))
            covered = end
        if not self.acknowledge(covered):
            return None
        if self.stopped:
            log.info(
                "stop: everything before it is committed (item %s); exiting",
                self.done_last or "-",
            )
        return covered

    @staticmethod
    def items_through(positions: list[int], end: int) -> int:
        """How many decoded items lie in the first `end` entries of the batch."""
        return sum(1 for position in positions if position < end)

    @staticmethod
    def entries_through(raw: list[bytes], positions: list[int], count: int, stop: bool) -> int:
        """The entries of `raw` a commit of the first `count` decoded items takes off Redis:
        through the last one after a stop (what follows a stop stays for the next start), else
        up to the next decoded item (unreadable entries between them go as dead letters), or
        all of them."""
        if stop:
            return positions[count - 1] + 1
        if count < len(positions):
            return positions[count]
        return len(raw)

    def commit_isolating(
        self,
        raw: list[bytes],
        items: list[Item],
        positions: list[int],
        start: int,
        backlog: int,
    ) -> tuple[ledger.Plan, int]:
        """Commit items[start:]; returns the plan committed and the entries of `raw` it covers.
        When PostgreSQL refuses it for the data it carries, find the first item whose presence
        makes it refuse (a binary search of rolled-back tries), commit the items before it and
        that item as a dead letter with the error, and return that: the caller goes on with the
        rest. Raises postgres.ERRORS for an outage or a refusal that is not the data's."""
        rest = items[start:]
        plan = ledger.plan_batch(rest, self.meters, self.records, self.done)
        end = self.entries_through(raw, positions, start + plan.consumed, plan.stop)
        try:
            self.commit(plan, backlog - end)
            return plan, end
        except postgres.ERRORS as exc:
            if not postgres.refused_for_data(exc):
                raise
            error = exc
        good, bad = 0, len(rest)  # rest[:good] is accepted, rest[:bad] refused
        while bad - good > 1:
            middle = (good + bad) // 2
            if self.accepted(
                ledger.plan_batch(rest[:middle], self.meters, self.records, self.done)
            ):
                good = middle
            else:
                bad = middle
        culprit = rest[good]
        plan = ledger.plan_batch(rest[:good], self.meters, self.records, self.done)
        if not ledger.already_done(culprit, plan.done):
            plan.done[culprit.epoch] = culprit.seq
            plan.last = (culprit.epoch, culprit.seq)
            plan.reject(culprit, f"PostgreSQL refused it ({describe_error(error)})")
        plan.consumed = good + 1
        end = self.entries_through(raw, positions, start + plan.consumed, False)
        self.commit(plan, backlog - end)  # a refusal now is not this item's: it raises
        return plan, end

    def accepted(self, plan: ledger.Plan) -> bool:
        """Whether PostgreSQL takes this plan: written, then rolled back."""
        con = self.session.connection()
        con.run("BEGIN")
        try:
            self.write(con, plan, 0)
        except postgres.ERRORS as exc:
            if not postgres.refused_for_data(exc):
                raise
            return False
        finally:
            with contextlib.suppress(*postgres.ERRORS):
                con.run("ROLLBACK")
        return True

    def report(
        self, plan: ledger.Plan, raw: list[bytes], positions: list[int], begin: int, end: int
    ) -> None:
        """After a commit: the dead letters it made, in Redis's list too (after the commit, so
        a try that PostgreSQL refused leaves none), and the log lines."""
        for level, line in plan.notes:
            log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", line)
        readable = set(positions)
        for position in range(begin, end):
            if position not in readable:
                log.error(
                    "unreadable work item %s (%s); kept as a dead letter",
                    logs.quoted(raw[position]),
                    self.unreadable.get(position, "?"),
                )
                self.queues.dead_letter(
                    PROCESSING,
                    printable(raw[position].decode("utf-8", "replace"), PREVIEW_BYTES),
                    f"unreadable work item: {self.unreadable.get(position, '?')}",
                )
        for item, reason in plan.unusable:
            log.error(
                "cannot use %s %s: %s; kept in the dead-letter list",
                logs.quoted(item.key),
                logs.quoted(item.value),
                logs.quoted(reason, 200),
            )
            self.queues.dead_letter(printable(item.key), printable(item.value), printable(reason))
        if plan.skipped:
            log.warning(
                "%s items were committed before (redelivered after a crash or a lost "
                "acknowledgement); skipped",
                plan.skipped,
            )
        log.debug(
            "%s entries committed (%s skipped as done, %s rows new, %s moved)",
            end - begin,
            plan.skipped,
            len(plan.new_rows),
            len(plan.moved_rows),
        )
        if plan.last is not None:
            self.done_last = plan.last[1]

    def acknowledge(self, count: int) -> bool:
        """Drop the first `count` committed entries from Redis (lost: they come back and are
        skipped as done)."""
        try:
            if count:
                self.queues.ack(count)
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            self.redis_outage.failed(exc)
            return False
        return True

    def decode(self, raw: list[bytes]) -> tuple[list[Item], list[int]]:
        """The batch's items, and the position in `raw` of each (an unreadable entry has
        none: it is set aside as a dead letter when its turn comes, with its reason)."""
        items, positions = [], []
        self.unreadable = {}
        for position, data in enumerate(raw):
            try:
                items.append(Item.decode(data))
                positions.append(position)
            except ValueError as exc:
                self.unreadable[position] = str(exc)
        return items, positions

    def commit(self, plan: ledger.Plan, backlog: int) -> None:
        con = self.session.connection()
        with postgres.transaction(con):
            current = self.write(con, plan, backlog)
        self.session.touched()
        self.progress_epoch = current
        self.saved_backlog = backlog
        self.pg_outage.succeeded()

    def write(self, con: postgres.Connection, plan: ledger.Plan, backlog: int) -> str:
        """The plan's statements, inside the caller's transaction; the epoch worker_progress
        holds after them."""
        temporary = sorted(plan.new_rows, reverse=True)  # -1, -2, ...: oldest row first
        plan.remap(dict(zip(temporary, store.allocate_indexes(con, len(temporary)), strict=True)))
        store.insert_rows(con, plan.new_rows)
        store.update_rows(con, plan.moved_rows)
        store.save_status(con, plan.records, plan.kwh(self.meters))
        store.insert_dead_letters(con, plan.dead_letters)
        current = plan.last[0] if plan.last is not None else self.progress_epoch
        finished = finished_epochs(self.done, plan.done, current, self.progress_epoch)
        if finished:
            store.save_done(con, finished)
        if plan.last is not None:
            store.save_progress(con, plan.last[0], plan.last[1], backlog)
        return current

    def connected(self) -> bool:
        """Connect, take the processor lock, bring the schema up to date and load the state."""
        if self.session.is_open and self.loaded:
            return True
        self.loaded = False  # a refused load keeps the session, and is tried again
        try:
            con = self.session.connection()
            if self.schema_version is None:  # a reconnection only loads the state again
                self.schema_version = schema.apply(con, self.config_meters)
            self.meters = meter_store.load_meters(con)
            self.records = store.load_status(con)
            self.done = store.load_done(con)
            self.progress_epoch = store.load_progress_epoch(con)
            self.loaded = True
        except postgres.LockHeld as exc:
            postgres.failed(exc, self.pg_outage)  # the connection stays for the next try
            return False
        except postgres.ERRORS as exc:
            self.lost_database(exc)
            return False
        self.sequence_checked = False  # against the state just loaded (in run_once: Redis errors)
        self.pg_outage.succeeded()
        log.info(
            "connected to PostgreSQL %s (schema version %s, meters %s)",
            self.pg.describe(),
            self.schema_version,
            ", ".join(map(str, self.meters)),
        )
        return True

    def check_redis_sequence(self) -> None:
        """Redis that lost its last writes (a power cut) numbers new items again from where it
        was: give them a new epoch, so they cannot look committed."""
        problem = self.queues.ensure_ahead(self.done)
        if problem:
            log.error("%s", problem)

    def lost_database(self, exc: BaseException, waiting: int | None = None) -> None:
        """An outage closes the session (the next step connects again); a refused statement
        keeps it, and says that `waiting` items wait (pipeline_lag: Grafana's "not
        committing"). Either way the wait grows with each failure, and one line is logged per
        change of state."""
        if postgres.is_outage(exc):
            self.session.close()
        elif waiting:
            with contextlib.suppress(*postgres.ERRORS, postgres.LockHeld):  # it says what it can
                store.save_waiting(self.session.connection(), waiting)
        postgres.failed(exc, self.pg_outage)

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


def finished_epochs(
    before: dict[str, int], after: dict[str, int], current: str, stored: str
) -> dict[str, int]:
    """What worker_epochs must be told by a commit: worker_progress holds the current epoch's
    last item, so a commit writes one row, not two; worker_epochs gets an epoch's last item
    once it is no longer current (a new epoch begins only when Redis lost its data) or when an
    older epoch's items still come (they wait in Redis from before)."""
    return {
        e: seq for e, seq in after.items() if e != current and (before.get(e) != seq or e == stored)
    }


def main(termination: program.Termination) -> int:
    pg = config.postgres_settings()
    meters = config.load_meters()
    redis_settings = config.redis_settings()
    interval = config.commit_interval(os.environ)
    r = connect_redis(redis_settings)
    processor = Processor(r, pg, meters, termination=termination, commit_interval=interval)
    log.info(
        "processor started (PostgreSQL %s, Redis %s, a commit every %g s)",
        pg.describe(),
        redis_settings.describe(),
        interval,
    )
    if processor.run():
        return program.EXIT_STOPPED
    log.info("SIGTERM: everything routed before it is committed; exiting")
    return program.EXIT_TERMINATED


if __name__ == "__main__":
    program.run("processor", main, deferred_sigterm=True)
