"""The processor: turns work items into PostgreSQL history, exactly once.

Its job, forever:
  1. take a batch from Redis: first what a crash left on the processing list, then new work;
  2. apply it to the meters in memory (ledger.plan_batch: pure arithmetic);
  3. write the result in one PostgreSQL transaction, together with the last item's
     (epoch, seq);
  4. only then drop the batch from Redis.
A crash between 3 and 4 brings the same items back; their (epoch, seq) says they are already
committed, so they are skipped: nothing is lost and nothing is counted twice.
On a stop item it commits everything before it and exits 0 (the stop protocol,
docs/CONTRACT.md). A lost connection is retried with backoff; the router keeps clearing keys
meanwhile and the backlog drains when it is back. Only one processor works on a database
(db.Lock).
"""

from __future__ import annotations

import logging

import redis

from . import config, db, ledger, logs, program, schema
from .domain import Item, Meter, MeterRecord
from .outage import Outage
from .queue import PROCESSING, Queues
from .redisconn import connect_redis
from .store import meters as meter_store
from .store import processor as store

BATCH = 5000  # items per transaction: a 100,000-item backlog drains in 20 of them
IDLE_WAIT = 2.0  # seconds blocked on Redis between looks at the debug key

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
        idle_wait: float = IDLE_WAIT,
    ) -> None:
        self.r = r
        self.queues = Queues(r)
        self.pg = pg
        self.config_meters = config_meters
        self.termination = termination or program.Termination()
        self.idle_wait = idle_wait
        self.session = db.LockedSession(lambda name: db.connect(pg, name), "processor", lease)
        # The committed state, as PostgreSQL holds it.
        self.meters: dict[int, Meter] = {}
        self.records: dict[int, MeterRecord] = {}
        self.done: dict[str, int] = {}  # last committed seq per epoch
        self.saved_backlog: int | None = None
        self.sequence_checked = False
        self.debug = logs.DebugSwitch(log)
        self.pg_outage = Outage("PostgreSQL", log)
        self.redis_outage = Outage("Redis", log)

    def run(self) -> None:
        """Process until a stop item is committed."""
        while not self.run_once():
            pass

    def run_once(self) -> bool:
        """One step: connect if need be, then commit one batch or wait for work. True once a
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
            self.debug.refresh(lambda: self.r.get(logs.DEBUG_KEY))  # under load too
            raw = self.queues.take(BATCH)
            if not raw:
                self.wait_idle()
                return False
            backlog = self.queues.backlog()
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            self.redis_outage.failed(exc)
            return False
        with self.termination.busy():  # SIGTERM lets the batch finish
            return self.process(raw, backlog)

    def process(self, raw: list[bytes], backlog: int) -> bool:
        """One batch, start to end. True when it ended with a committed stop."""
        items, positions = self.decode(raw)
        plan = ledger.plan_batch(items, self.meters, self.records, self.done)
        consumed = positions[plan.consumed - 1] + 1 if plan.consumed < len(items) else len(raw)
        try:
            for item, reason in plan.unusable:
                log.error(
                    "cannot use %s %s: %s; kept in the dead-letter list",
                    item.key,
                    logs.quoted(item.value),
                    reason,
                )
                self.queues.dead_letter(item.key, item.value, reason)
            self.commit(plan, backlog - consumed)
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
            self.queues.ack(consumed)
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            # The items come back and are skipped as done.
            self.redis_outage.failed(exc)
            return False
        log.debug(
            "batch of %s items committed (%s skipped as done, %s rows new, %s moved)",
            consumed,
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

    def decode(self, raw: list[bytes]) -> tuple[list[Item], list[int]]:
        """The batch's items, and the position in `raw` of each."""
        items, positions = [], []
        for position, data in enumerate(raw):
            try:
                items.append(Item.decode(data))
                positions.append(position)
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "unreadable work item %s (%s); kept in the dead-letter list",
                    logs.quoted(data),
                    exc,
                )
                self.queues.dead_letter(
                    PROCESSING, repr(data)[:200], f"unreadable work item: {exc}"
                )
        return items, positions

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

    def wait_idle(self) -> None:
        """Block on Redis until work arrives; meanwhile follow the debug key and the backlog."""
        self.queues.wait_for_work(self.idle_wait)
        self.check_redis_sequence()
        if self.saved_backlog != 0 and self.session.is_open:
            backlog = self.queues.backlog()
            try:
                store.save_backlog(self.session.connection(), backlog)
                self.saved_backlog = backlog
            except db.ERRORS as exc:
                self.lost_database(exc)


def main(termination: program.Termination) -> int:
    pg = config.postgres_settings()
    meters = config.load_meters()
    redis_settings = config.redis_settings()
    r = connect_redis(redis_settings, blocking_timeout=IDLE_WAIT)
    processor = Processor(r, pg, meters, termination=termination)
    log.info(
        "processor started (PostgreSQL %s, Redis %s)", pg.describe(), redis_settings.describe()
    )
    processor.run()
    return program.EXIT_STOPPED


if __name__ == "__main__":
    program.run("processor", main)
