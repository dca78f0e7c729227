"""The processor: turns work items into PostgreSQL history, exactly once, a few seconds at a time.

Its job, forever:
  1. every COMMIT_INTERVAL seconds (at once while a backlog waits), take what the router has
     routed: first what a crash left on the processing list, then new work;
  2. keep back what Redis may not have on disk yet (routed less than durable_after ago: a power
     cut could make Redis forget the move and hand the pulse's key out again);
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
drains when it is back. Only one processor works on a database (db.Lock).
"""

from __future__ import annotations

import logging
import os
import time

import redis

from . import config, db, ledger, logs, program, schema
from .domain import Item, Meter, MeterRecord
from .outage import Outage
from .queue import PROCESSING, Queues, now_ms
from .redisconn import connect_redis, durable_after
from .store import meters as meter_store
from .store import processor as store

BATCH = 5000  # items per transaction at most: a 100,000-item backlog drains in 20 of them
COMMIT_INTERVAL = 5.0  # seconds between commits, unless a backlog waits (COMMIT_INTERVAL)
FINISH_GRACE = 10.0  # seconds after SIGTERM to commit what was routed before it

log = logging.getLogger("energy_worker.processor")


class Processor:
    def __init__(
        self,
        r: redis.Redis,
        pg: config.PostgresSettings,
        config_meters: dict[int, Meter],
        *,
        termination: program.Termination | None = None,
        lease: float = db.LEASE,
        db_timeout: float = db.TIMEOUT,
        commit_interval: float = COMMIT_INTERVAL,
        durable_after: float | None = None,
    ) -> None:
        self.r = r
        self.queues = Queues(r)
        self.pg = pg
        self.config_meters = config_meters
        self.termination = termination or program.Termination(deferred=True)
        self.commit_interval = commit_interval
        self.durable_after = durable_after  # None: ask Redis (redisconn.durable_after)
        self.session = db.LockedSession(
            lambda name: db.connect(pg, name, db_timeout), "processor", lease
        )
        # The committed state, as PostgreSQL holds it.
        self.meters: dict[int, Meter] = {}
        self.records: dict[int, MeterRecord] = {}
        self.done: dict[str, int] = {}  # last committed seq per epoch
        self.saved_backlog: int | None = None
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
        except db.ERRORS as exc:
            self.lost_database(exc)
            return False
        try:
            if not self.sequence_checked:
                self.check_redis_sequence()
                self.sequence_checked = True
            if self.durable_after is None:
                self.durable_after = durable_after(self.r, log)
            self.debug.refresh(lambda: self.r.get(logs.DEBUG_KEY))  # under load too
            raw = self.queues.take(BATCH)
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
        ready = self.ready(items)
        if ready == 0:  # all of it too fresh: wait until the oldest is on disk
            self.termination.sleep(self.wait_for_durable(items[0]))
            return False
        with self.termination.busy():
            done = self.process(raw, items[:ready], positions, backlog)
        if not done and len(raw) < BATCH and not self.termination.requested:
            self.termination.sleep(self.commit_interval)  # gather the next interval's pulses
        return done

    def ready(self, items: list[Item]) -> int:
        """How many items, from the head, Redis has on disk by now (routed at least
        durable_after ago). Items decoded badly are ready at once: there is nothing to keep."""
        limit = now_ms() - int(1000 * (self.durable_after or 0.0))
        for position, item in enumerate(items):
            if item.at_ms > limit:
                return position
        return len(items)

    def wait_for_durable(self, item: Item) -> float:
        ahead = item.at_ms - now_ms() + 1000 * (self.durable_after or 0.0)
        # A clock set back makes `at` lie in the future: never wait longer than a commit
        # interval for it (the item has been in Redis at least that long by then).
        return min(max(ahead / 1000, 0.01), self.commit_interval)

    def process(
        self, raw: list[bytes], items: list[Item], positions: list[int], backlog: int
    ) -> bool:
        """Commit `items` (the head of `raw`), then drop them from Redis. True when they
        ended with a stop."""
        plan = ledger.plan_batch(items, self.meters, self.records, self.done)
        # The entries of `raw` this commit takes off Redis: through the last planned item (a
        # stop ends the plan early), or up to the first item kept back, or all of them.
        if plan.consumed < len(items):
            covered = positions[plan.consumed - 1] + 1
        elif len(items) < len(positions):
            covered = positions[len(items)]
        else:
            covered = len(raw)
        try:
            self.dead_letter_unreadable(raw[:covered], positions)
            for item, reason in plan.unusable:
                log.error(
                    "cannot use %s %s: %s; kept in the dead-letter list",
                    item.key,
                    logs.quoted(item.value),
                    reason,
                )
                self.queues.dead_letter(item.key, item.value, reason)
            self.commit(plan, backlog - covered)
        except db.ERRORS as exc:
            self.lost_database(exc)
            return False
        except redis.RedisError as exc:
            self.redis_outage.failed(exc)
            return False
        # Committed: from here on our state is the database's, whatever becomes of the ack.
        self.records.update(plan.records)
        self.done = plan.done
        if plan.skipped:
            log.warning(
                "%s items were committed before (redelivered after a crash or a lost "
                "acknowledgement); skipped",
                plan.skipped,
            )
        try:
            self.queues.ack(covered)
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            # The items come back and are skipped as done.
            self.redis_outage.failed(exc)
            return False
        log.debug(
            "%s items committed (%s skipped as done, %s rows new, %s moved)",
            covered,
            plan.skipped,
            len(plan.new_rows),
            len(plan.moved_rows),
        )
        if plan.stop:
            log.info(
                "stop: everything before it is committed (item %s); exiting",
                plan.last[1] if plan.last else "-",
            )
        return plan.stop

    @staticmethod
    def decode(raw: list[bytes]) -> tuple[list[Item], list[int]]:
        """The batch's items, and the position in `raw` of each (an unreadable entry has
        none: it is set aside when its turn comes, dead_letter_unreadable)."""
        items, positions = [], []
        for position, data in enumerate(raw):
            try:
                items.append(Item.decode(data))
                positions.append(position)
            except (ValueError, KeyError, TypeError):
                continue
        return items, positions

    def dead_letter_unreadable(self, raw: list[bytes], positions: list[int]) -> None:
        readable = set(positions)
        for position, data in enumerate(raw):
            if position not in readable:
                log.error("unreadable work item %s; kept as a dead letter", logs.quoted(data))
                self.queues.dead_letter(PROCESSING, repr(data)[:200], "unreadable work item")

    def commit(self, plan: ledger.Plan, backlog: int) -> None:
        con = self.session.connection()
        with db.transaction(con):
            temporary = sorted(plan.new_rows, reverse=True)  # -1, -2, ...: oldest row first
            plan.remap(
                dict(zip(temporary, store.allocate_indexes(con, len(temporary)), strict=True))
            )
            store.insert_rows(con, plan.new_rows)
            store.update_rows(con, plan.moved_rows)
            store.save_status(con, plan.records, plan.kwh(self.meters))
            store.insert_dead_letters(con, plan.dead_letters)
            changed = {e: seq for e, seq in plan.done.items() if self.done.get(e) != seq}
            if changed:
                store.save_done(con, changed)
            if plan.last is not None:
                store.save_progress(con, plan.last[0], plan.last[1], backlog)
        self.session.touched()
        self.saved_backlog = backlog
        self.pg_outage.succeeded()

    def connected(self) -> bool:
        """Connect, take the processor lock, bring the schema up to date and load the state."""
        if self.session.is_open:
            return True
        try:
            con = self.session.connection()
            version = schema.apply(con, self.config_meters)
            self.meters = meter_store.load_meters(con)
            self.records = store.load_status(con)
            self.done = store.load_done(con)
        except db.LockHeld as exc:
            db.failed(exc, self.pg_outage)  # the connection stays for the next try
            return False
        except db.ERRORS as exc:
            self.lost_database(exc)
            return False
        self.sequence_checked = False  # against the state just loaded (in run_once: Redis errors)
        self.pg_outage.succeeded()
        log.info(
            "connected to PostgreSQL %s (schema version %s, meters %s)",
            self.pg.describe(),
            version,
            ", ".join(map(str, self.meters)),
        )
        return True

    def check_redis_sequence(self) -> None:
        """Redis that lost its last writes (a power cut) numbers new items again from where it
        was: give them a new epoch, so they cannot look committed."""
        problem = self.queues.ensure_ahead(self.done)
        if problem:
            log.error("%s", problem)

    def lost_database(self, exc: BaseException) -> None:
        self.session.close()
        db.failed(exc, self.pg_outage)

    def idle(self) -> None:
        """Nothing to do: say the backlog is empty (once), then wait for the next interval."""
        if self.saved_backlog != 0:
            try:
                store.save_backlog(self.session.connection(), 0)
                self.saved_backlog = 0
            except db.ERRORS as exc:
                self.lost_database(exc)
                return
        self.termination.sleep(self.commit_interval)

    def finish(self) -> bool:
        """SIGTERM has come: commit what was routed before it, waiting only until Redis has it
        on disk (at most FINISH_GRACE), unless PostgreSQL is out of reach: then exit at once,
        since the items wait in Redis for the next start. True when a stop was among them."""
        routed_before = now_ms()
        deadline = time.monotonic() + (self.durable_after or 0.0) + FINISH_GRACE
        while self.session.is_open and time.monotonic() < deadline:
            try:
                raw = self.queues.take(BATCH)
                backlog = self.queues.backlog() if raw else 0
            except redis.RedisError:
                return False
            items, positions = self.decode(raw)
            mine = sum(1 for item in items if item.at_ms <= routed_before)
            if mine == 0:
                return False
            ready = min(self.ready(items), mine)
            if ready == 0:
                time.sleep(self.wait_for_durable(items[0]))
                continue
            with self.termination.busy():
                if self.process(raw, items[:ready], positions, backlog):
                    return True
        return False


def main(termination: program.Termination) -> int:
    pg = config.postgres_settings()
    meters = config.load_meters()
    redis_settings = config.redis_settings()
    interval = config.seconds(os.environ, "COMMIT_INTERVAL", COMMIT_INTERVAL, 0, 60)
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
