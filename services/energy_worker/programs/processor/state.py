"""The processor's connections and the committed state it loads from PostgreSQL: connect, check
the schema's version (the set-up's to change, never the processor's), take the processor lock,
load the meters the set-up wrote and what is done; tell an outage from a refused statement."""

from __future__ import annotations

import contextlib
import logging

import redis

from energy_worker.adapters import config, logs, postgres, schema
from energy_worker.adapters.config import COMMIT_INTERVAL
from energy_worker.adapters.outage import Outage
from energy_worker.adapters.sql import ingest as store
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.adapters.work_queue import Queues
from energy_worker.core.domain import Meter, MeterRecord
from energy_worker.programs.processor.readiness import Readiness
from energy_worker.programs.processor.row_indexes import RowIndexes
from energy_worker.runtime import program

log = logging.getLogger("energy_worker.programs.processor")


class State:
    """What the processor holds: its connections, and the committed state as PostgreSQL has
    it, loaded on each (re)connection."""

    def __init__(
        self,
        r: redis.Redis,
        pg: config.PostgresSettings,
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
        self.termination = termination or program.Termination(deferred=True)
        self.commit_interval = commit_interval
        self.durable_after = durable_after  # None: ask Redis (redis_client.durable_after)
        self.session = postgres.LockedSession(
            lambda name: postgres.connect(pg, name, db_timeout),
            "processor",
            lease,
            check=self.check_schema,  # on each (re)connection: a SELECT, never DDL
        )
        # The committed state, as PostgreSQL holds it.
        self.meters: dict[int, Meter] = {}
        self.records: dict[int, MeterRecord] = {}
        self.done: dict[str, int] = {}  # last committed seq per epoch
        self.progress_epoch = ""  # the epoch worker_progress holds
        self.row_indexes = RowIndexes()  # reserved for new rows; emptied at each load
        self.saved_backlog: int | None = None
        self.readiness: Readiness | None = None  # once durable_after is known
        self.schema_version: int | None = None  # as the last connection found it
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

    def connected(self) -> bool:
        """Connect, check the schema, take the processor lock and load the state."""
        if self.session.is_open and self.loaded:
            return True
        self.loaded = False  # a refused load keeps the session, and is tried again
        self.row_indexes.discard()
        try:
            con = self.session.connection()
            self.meters = meter_store.load_meters(con)
            self.records = store.load_status(con)
            self.done = store.load_done(con)
            self.progress_epoch = store.load_progress_epoch(con)
            self.loaded = True
        except postgres.Waiting as exc:  # the lock held, another schema: said once
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

    def check_schema(self, con: postgres.Connection) -> None:
        self.schema_version = schema.check(con)

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
            with contextlib.suppress(*postgres.ERRORS, postgres.Waiting):  # it says what it can
                store.save_waiting(self.session.connection(), waiting)
        postgres.failed(exc, self.pg_outage)
