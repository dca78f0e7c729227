"""The processor: turns work items into PostgreSQL history, exactly once.

Its job, forever:
  1. take a batch from Redis: first what a crash left on the processing list, then new work;
  2. apply it to the meters in memory (ledger.plan_batch: pure arithmetic);
  3. write the result in one PostgreSQL transaction, together with the last item's
     (epoch, seq);
  4. only then drop the batch from Redis.
A crash between 3 and 4 brings the same items back; their (epoch, seq) says they are already
committed, so they are skipped: nothing is lost and nothing is counted twice.
On a stop item it commits everything before it and exits 0. A lost connection is retried with
backoff; the router keeps clearing keys meanwhile and the backlog drains when it is back.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from types import FrameType

import pg8000.native
import redis

from . import config, db, ledger, lifeline, logs, schema, store
from .queue import Item, Queues
from .redisconn import connect_redis
from .retry import Outage, describe_error

BATCH = 5000  # items per transaction: a 100,000-item backlog drains in 20 of them
IDLE_WAIT = 2.0  # seconds blocked on Redis between looks at the debug key
EXIT_STOPPED = 0
EXIT_CONFIG = 2
EXIT_TERMINATED = 143  # by SIGTERM: not a stop, so supervisord restarts it if not asked to

log = logging.getLogger("energy_worker.processor")


class Processor:
    def __init__(
        self, r: redis.Redis, pg: config.PostgresSettings, meters: dict[int, config.Meter]
    ) -> None:
        self.queues = Queues(r)
        self.r = r
        self.pg = pg
        self.config_meters = meters
        self.con: pg8000.native.Connection | None = None
        self.meters: dict[int, config.Meter] = {}
        self.records: dict[int, store.MeterRecord] = {}
        self.done: dict[str, int] = {}  # last committed seq per epoch
        self.saved_backlog: int | None = None
        self.debug = logs.DebugSwitch(log)
        self.pg_outage = Outage("PostgreSQL", log)
        self.redis_outage = Outage("Redis", log)
        self.terminating = False
        self.busy = False  # a batch is between take and ack: SIGTERM lets it finish
        self.sequence_checked = False

    def run(self) -> None:
        """Process until a stop item is committed."""
        while not self.terminating:
            lifeline.check(log)
            if not self.connected():
                continue
            try:
                if not self.sequence_checked:
                    self.check_redis_sequence()
                    self.sequence_checked = True
                self.debug.refresh(self.r)  # at most every 2 s, under load too
                raw = self.queues.take(BATCH)
                if not raw:
                    self.wait_idle()
                    continue
                backlog = self.queues.backlog()
                self.redis_outage.succeeded()
            except redis.RedisError as exc:
                self.redis_outage.failed(exc)
                continue
            if self.process(raw, backlog):
                return

    def process(self, raw: list[bytes], backlog: int) -> bool:
        """One batch, start to end. True when it ended with a committed stop."""
        self.busy = True
        try:
            return self._process(raw, backlog)
        finally:
            self.busy = False

    def _process(self, raw: list[bytes], backlog: int) -> bool:
        items, used = self.decode(raw)
        plan = ledger.plan_batch(items, self.meters, self.records, self.done)
        consumed = used[plan.consumed - 1] + 1 if plan.consumed < len(items) else len(raw)
        try:
            for item, reason in plan.unusable:
                log.error(
                    "cannot use %s %s: %s; kept in the dead-letter list",
                    item.key,
                    logs.shown(item.value),
                    reason,
                )
                self.queues.dead_letter(item.key, item.value, reason)
            self.commit(plan, backlog - consumed)
        except db.UNAVAILABLE as exc:
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
        items, used = [], []
        for position, data in enumerate(raw):
            try:
                items.append(Item.decode(data))
                used.append(position)
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "unreadable work item %s (%s); kept in the dead-letter list",
                    logs.shown(data),
                    exc,
                )
                self.queues.dead_letter(
                    "energy-worker:processing", repr(data)[:200], f"unreadable work item: {exc}"
                )
        return items, used

    def commit(self, plan: ledger.Plan, backlog: int) -> None:
        assert self.con is not None
        con = self.con
        con.run("BEGIN")
        try:
            temporary = sorted(plan.new_rows, reverse=True)  # -1, -2, ...: oldest row first
            plan.remap(
                dict(zip(temporary, store.allocate_indexes(con, len(temporary)), strict=True))
            )
            store.insert_rows(con, plan.new_rows)
            store.update_rows(con, plan.moved_rows)
            store.save_status(con, plan.records, ledger.kwh_of(plan, self.meters))
            changed = {e: seq for e, seq in plan.done.items() if self.done.get(e) != seq}
            if changed:
                store.save_done(con, changed)
            if plan.last is not None:
                store.save_progress(con, plan.last[0], plan.last[1], backlog)
            con.run("COMMIT")
        except BaseException:
            with contextlib.suppress(db.UNAVAILABLE):
                con.run("ROLLBACK")
            raise
        self.saved_backlog = backlog
        self.pg_outage.succeeded()

    def connected(self) -> bool:
        """Connect, take the processor lock, bring the schema up to date and load the state."""
        if self.con is not None:
            return True
        con = None
        try:
            con = db.connect(self.pg, "energy-worker processor")
            if not store.try_lock(con, "processor"):
                raise RuntimeError("another processor is working on this database")
            version = schema.apply(con, self.config_meters)
            self.meters = store.load_meters(con)
            self.records = store.load_status(con)
            self.done = store.load_done(con)
        except (*db.UNAVAILABLE, RuntimeError) as exc:
            db.close_quietly(con)
            self.pg_outage.failed(exc)
            return False
        self.con = con
        self.sequence_checked = False  # against the state just loaded (in run: Redis errors)
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
        if not db.is_connection_error(exc):  # not an outage: say what PostgreSQL refused
            log.error("PostgreSQL refused a batch (%s); retrying", describe_error(exc))
        db.close_quietly(self.con)
        self.con = None
        self.pg_outage.failed(exc)

    def wait_idle(self) -> None:
        """Block on Redis until work arrives; meanwhile follow the debug key and the backlog."""
        self.queues.wait_for_work(IDLE_WAIT)
        self.check_redis_sequence()
        if self.saved_backlog != 0 and self.con is not None:
            backlog = self.queues.backlog()
            try:
                store.save_backlog(self.con, backlog)
                self.saved_backlog = backlog
            except db.UNAVAILABLE as exc:
                self.lost_database(exc)

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        # Mid-batch we finish the batch; anywhere else (idle, waiting out an outage) there is
        # nothing to finish, and every effect is transactional.
        self.terminating = True
        if not self.busy:
            raise SystemExit(EXIT_TERMINATED)


def main() -> int:
    logs.setup("processor")
    try:
        pg = config.postgres_settings()
        meters = config.load_meters()
        r = connect_redis(config.redis_settings(), blocking_timeout=IDLE_WAIT)
    except config.ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    processor = Processor(r, pg, meters)
    signal.signal(signal.SIGTERM, processor.on_sigterm)
    log.info(
        "processor started (PostgreSQL %s, Redis %s)",
        pg.describe(),
        config.redis_settings().describe(),
    )
    processor.run()
    if processor.terminating:
        log.info("terminated by signal after the current batch")
        return EXIT_TERMINATED
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
