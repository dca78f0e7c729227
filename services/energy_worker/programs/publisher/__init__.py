"""The publisher: every configured meter in Home Assistant, over MQTT with discovery.

`python -m energy_worker.programs.publisher`, run by supervisord when MQTT_HOST is set
(entrypoint.sh
puts its program section in place). Each step of its loop (Publisher.run_once):

1. PostgreSQL: connect (holding the publisher lock: one publisher per database, so two never
   fight over one MQTT client id), read this installation's id and the COMMITTED state of the
   configured meters (adapters/sql/installation.py).
2. Follow: at most once a second one small query tells whether anything committed changed;
   only then the meters are read again. The query doubles as the lock's heartbeat.
3. The broker (publisher/broker.py): connected with a last will; a new connection starts a
   session that says `online`, reads back what this installation left retained and empties
   the topics of meters no longer configured.
4. Publish what changed: discovery configs at once, each sensor's state at most once a second
   however fast pulses come (ha_discovery.throttle_wait); the power falls toward zero while
   pulses stay away, as Grafana draws it. The energy sensor never goes below what Home
   Assistant has seen.
5. Wait, running the MQTT network loop, until the next look or the next throttled state.

Outages: a broker that is down, unreachable or refuses the login, and a PostgreSQL that is
unreachable or refuses a statement (the one rule, postgres.failed), are retried forever with backoff
and logged once per change of state, never a crash. While PostgreSQL is unreachable the sensors
are `offline` (what they would show could be stale).

It talks to the rest only through PostgreSQL: the processor knows nothing of MQTT, so nothing
here can slow or stop the pulse path. The clocks are injectable, so tests need not wait.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any

from energy_worker.adapters import config, postgres, schema
from energy_worker.adapters.outage import Outage
from energy_worker.adapters.sql import installation as store
from energy_worker.core.domain import MeterSnapshot
from energy_worker.programs.publisher import ha_discovery
from energy_worker.programs.publisher import settings as publisher_settings
from energy_worker.programs.publisher.broker import Broker, BrokerRefused
from energy_worker.programs.publisher.ha_discovery import (
    Layout,
    discovery,
)
from energy_worker.programs.publisher.outgoing import Outgoing
from energy_worker.runtime import program

POLL_INTERVAL = 1.0  # seconds between two looks at PostgreSQL
LOOP_SLICE = 1.0  # seconds of one network loop call at most: SIGTERM waits no longer

log = logging.getLogger("energy_worker.programs.publisher")


def say_meters(meters: dict[int, MeterSnapshot], configured: list[int]) -> None:
    missing = sorted(set(configured) - set(meters))
    log.info(
        "publishing meters %s%s",
        ", ".join(map(str, meters)) or "none",
        f"; configured but not in the database: {', '.join(map(str, missing))}" if missing else "",
    )


def keep_alive(session: postgres.LockedSession, broker: Broker | None) -> None:
    """The lock's heartbeat while no poll runs. A failure only closes the session: the next
    step connects again, and reports an outage if there is one."""
    if not session.is_open:
        return
    try:
        session.keep_alive()
    except postgres.ERRORS as exc:
        log.debug("PostgreSQL session lost while waiting: %s", exc)
        session.close()
        if broker is not None:
            broker.availability(online=False)


class Publisher:
    """The meters of one database on one broker. run_once() is one step of the loop; the
    waits, timeouts and clocks are parameters, so a test can drive it in-process."""

    def __init__(
        self,
        pg: config.PostgresSettings,
        settings: publisher_settings.MqttSettings,
        meters: Collection[int],
        *,
        termination: program.Termination | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        poll_interval: float = POLL_INTERVAL,
        min_interval: float = ha_discovery.MIN_INTERVAL,
        broker_retry: tuple[float, float] = (0.5, 30.0),
        pg_retry: tuple[float, float] = (0.2, 5.0),
        lease: float = postgres.LEASE,
        **broker_options: float,
    ) -> None:
        self.pg = pg
        self.settings = settings
        self.configured = sorted(meters)
        self.termination = termination or program.Termination()
        self.monotonic = monotonic  # the polls
        self.poll_interval = poll_interval
        self.outgoing = Outgoing(min_interval, clock, monotonic)
        self.broker_options = broker_options  # Broker's timeouts (tests shorten them)
        self.session = postgres.LockedSession(
            lambda name: postgres.connect(pg, name), "publisher", lease, check=schema.check
        )
        self.pg_outage = Outage(
            "PostgreSQL", log, first_delay=pg_retry[0], max_delay=pg_retry[1], sleep=self.idle
        )
        self.broker_outage = Outage(
            f"MQTT broker {settings.describe()}",
            log,
            first_delay=broker_retry[0],
            max_delay=broker_retry[1],
            sleep=self.idle,
        )
        self.layout: Layout | None = None
        self.broker: Broker | None = None
        # What PostgreSQL says.
        self.change: list[Any] | None = None
        self.meters: dict[int, MeterSnapshot] = {}
        self.configs: dict[str, str] = {}
        self.next_poll = -math.inf

    def run(self) -> None:
        """Publish until stopped by SIGTERM (or the loss of supervisord)."""
        while True:
            self.run_once()

    def run_once(self) -> None:
        """One step: PostgreSQL, the broker, what changed goes out; then wait until the next
        look or the next throttled state (at most poll_interval)."""
        if not self.database_ready():
            return
        if not self.follow_database():
            return
        if not self.broker_ready():
            return
        self.publish()
        self.idle(self.wait_time())

    # --- PostgreSQL: connect, follow the committed state --------------------------------------

    def database_ready(self) -> bool:
        if self.session.is_open:
            return True
        try:
            con = self.session.connection()
            ident = store.installation_id(con)
        except postgres.Waiting as exc:  # the lock held, another schema: said once
            postgres.failed(exc, self.pg_outage)  # the connection stays for the next try
            return False
        except postgres.ERRORS as exc:
            self.lost_database(exc)
            return False
        if self.layout is None:
            try:
                self.layout = Layout(
                    self.settings.discovery_prefix, self.settings.topic_prefix, ident
                )
            except ValueError as exc:
                raise config.ConfigError(str(exc)) from None
            self.broker = Broker(
                self.settings, self.layout, self.configured, self.termination, **self.broker_options
            )
        elif ident != self.layout.installation:
            # Another database (restored, replaced): other entities. Start afresh with them.
            log.error("the database's installation id changed to %s; restarting", ident)
            raise SystemExit(program.EXIT_FAILED)
        self.pg_outage.succeeded()
        self.change = None  # the next look reads everything again
        self.next_poll = -math.inf
        log.info("connected to PostgreSQL %s (installation %s)", self.pg.describe(), ident)
        return True

    def follow_database(self) -> bool:
        """At most once per poll_interval: one small query; the meters only when it changed."""
        now = self.monotonic()
        if now < self.next_poll:
            return True
        self.next_poll = now + self.poll_interval
        try:
            con = self.session.connection()
            change = store.changes(con)
            if change != self.change:
                first = self.change is None
                self.take(store.read_meters(con, self.configured))
                self.change = change
                if first:
                    say_meters(self.meters, self.configured)
            self.session.touched()
        except postgres.ERRORS as exc:
            self.lost_database(exc)
            return False
        self.pg_outage.succeeded()  # a refusal kept the session: it ends here
        if self.broker is not None:
            self.broker.availability(online=True)
        return True

    def take(self, meters: dict[int, MeterSnapshot]) -> None:
        self.meters = meters
        assert self.layout is not None
        self.configs = discovery(self.layout, meters.values())

    def lost_database(self, exc: BaseException) -> None:
        """The sensors go `offline` (what they show could be stale), then the one rule says
        what happened and waits, keeping the broker connection alive meanwhile. Only an outage
        closes the session: a refused statement would be refused again on a new one, and a
        reconnection would end the backoff (postgres.refused_for_data: nothing of the publisher's
        own is to isolate, it only reads)."""
        if postgres.is_outage(exc):
            self.session.close()
        if self.broker is not None:
            self.broker.availability(online=False)
        postgres.failed(exc, self.pg_outage)

    # --- the broker ---------------------------------------------------------------------------

    def broker_ready(self) -> bool:
        """Connected to the broker, or one attempt to connect (with backoff after a failure)."""
        broker = self.broker
        assert broker is not None
        if broker.connected:
            return True
        if broker.flap_delay:
            self.idle(broker.flap_delay)
        try:
            broker.connect()
        except (OSError, BrokerRefused) as exc:
            self.broker_outage.failed(exc)
            return False
        self.broker_outage.succeeded()
        log.info("connected to the MQTT broker %s", broker.describe())
        return True

    # --- publishing -------------------------------------------------------------------------

    def publish(self) -> None:
        broker, layout = self.broker, self.layout
        if broker is not None and layout is not None and broker.connected:
            self.outgoing.publish(broker, layout, self.configs, self.meters)

    # --- waiting ------------------------------------------------------------------------------

    def wait_time(self) -> float:
        """Until the next look at PostgreSQL or the next throttled state, at most
        poll_interval."""
        due = min(self.next_poll, self.outgoing.next_due) - self.monotonic()
        return min(max(due, 0.0), self.poll_interval)

    def idle(self, seconds: float) -> None:
        """Wait, running the MQTT network loop meanwhile (keepalive, acknowledgements), and
        keep the database session's lock alive (a broker outage's backoff is long)."""
        deadline = time.monotonic() + seconds
        while True:  # the network loop runs at least once, however short the wait
            keep_alive(self.session, self.broker)
            left = max(deadline - time.monotonic(), 0.0)
            broker = self.broker
            if broker is not None and broker.connected:
                broker.loop(min(left, LOOP_SLICE))
            elif left > 0:
                time.sleep(min(left, LOOP_SLICE))
            if time.monotonic() >= deadline:
                return

    def close(self) -> None:
        """On the way out: `offline` for every sensor, then the connections closed."""
        if self.broker is not None:
            self.broker.close()
        self.session.close()
