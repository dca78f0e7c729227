"""The router: takes every key the webhook writes into Redis, within milliseconds.

Its job, forever, in bounded memory whatever the input:
  1. hear about new keys from Redis keyspace notifications (notifications.py),
     only for names no longer than a legal one, and sweep all keys with SCAN now and then, step
     by step, for anything the notifications missed (longer names are rejected inside Redis);
  2. move each key atomically, stamped with the time it was taken, onto the processor's work
     list or the pusher's list (work_queue.Queues.route, which reads the key as keys.py does), legal
     keys first, in contract order;
  3. remove illegal input, with a copy in the dead-letter list and a log line (at a bounded
     rate: a flood of junk does not flood the log);
  4. on `stop`: route everything else present, then the stop marker, and exit 0 (the stop
     protocol, docs/CONTRACT.md).
`foo` and `debug` stay for the webhook; `debug` switches verbose logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import redis.client

from energy_worker.adapters import logs
from energy_worker.adapters.redis_client import HEALTH_CHECK_S, check_alive
from energy_worker.adapters.work_queue import Queues
from energy_worker.core import keys
from energy_worker.core.keys import MAX_NAME_LENGTH, Kind
from energy_worker.programs.router.notifications import (
    SWEEP_INTERVAL,
    SWEEP_INTERVAL_POLLING,
    Notifications,
)

SCAN_COUNT = 1000  # keys a sweep step looks at (SCAN's COUNT)
BATCH = 1000  # names routed together, legal keys first (bounds what a flood costs in memory)
MAX_STOPS = 16  # stop keys a sweep holds back to route last (`stop` in any letter case)
# The order in which keys found together are routed: the contract's (powerup first: a rebooted
# Arduino sends it before its first new pulse; stop last), debug before, illegal input after.
RANK = {Kind.DEBUG: -1, **{kind: rank for rank, kind in enumerate(keys.ROUTED)}}

log = logging.getLogger("energy_worker.programs.router")


@dataclass
class Found:
    """What a sweep holds between its steps, bounded: legal keys waiting for their turn, and
    the stop keys that go last."""

    stops: dict[bytes, None]
    held: list[tuple[int, bytes]] = field(default_factory=list)
    debug: bool = False  # a debug key was seen

    def add_stops(self, names: list[bytes]) -> None:
        for name in names:
            if len(self.stops) < MAX_STOPS:
                self.stops[name] = None


class Router:
    def __init__(
        self,
        r: redis.Redis,
        db_number: int,
        meters: frozenset[int],
        sweep_interval: float = SWEEP_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.r = r
        self.meters = meters
        self.queues = Queues(r, meters)
        self.notifications = Notifications(r)
        self.debug = logs.DebugSwitch(log)
        self.rejections = logs.Limited(log, "rejections", clock=clock)
        self.sweep_interval = sweep_interval
        self.clock = clock
        self.pubsub: redis.client.PubSub | None = None
        self.next_sweep = 0.0
        self.channel = f"__keyspace@{db_number}__:"  # a key event's channel: this, then the name

    def run(self) -> None:
        """Route until a stop has been routed (returns) or Redis fails (raises RedisError)."""
        try:
            while not self.run_once():
                pass
        finally:
            self.close()

    def run_once(self, max_wait: float | None = None) -> bool:
        """Wait for key events until the next sweep is due (at most max_wait seconds), route
        what they announce, and sweep when due. True once a stop has been routed."""
        if self.pubsub is None:
            self.listen()
            self.next_sweep = self.clock()  # a first sweep finds what came while we were away
        self.rejections.flush()
        wait = max(self.next_sweep - self.clock(), 0.0)
        if max_wait is not None:
            wait = min(wait, max_wait)
        assert self.pubsub is not None
        if self.pubsub.subscribed:
            # woken at least as often as the health check is due, to send it and miss its answer
            stops = self.route_all(self.heard(min(wait, HEALTH_CHECK_S)))
            if stops:
                return self.sweep(stops)
            check_alive(self.pubsub)
        elif wait > 0:
            time.sleep(wait)
        if self.clock() >= self.next_sweep:
            if self.sweep():
                return True
            self.next_sweep = self.clock() + self.sweep_interval
        return False

    def listen(self) -> None:
        """Subscribe to the events that announce webhook keys: SET, and new keys of any type.
        Keyspace events, whose channel is the key's name, matched by patterns of at most as
        many characters as a legal name: a longer name is never even sent to us (the sweep
        rejects it inside Redis)."""
        self.pubsub = self.r.pubsub()  # type: ignore[no-untyped-call]
        if self.notifications.enable():
            self.pubsub.psubscribe(*(self.channel + "?" * n for n in range(MAX_NAME_LENGTH + 1)))
        else:
            self.sweep_interval = SWEEP_INTERVAL_POLLING

    def heard(self, timeout: float) -> list[bytes]:
        """The names announced by key events: waits up to timeout seconds for the first, then
        takes what has come (at most BATCH names, each once)."""
        assert self.pubsub is not None
        names: dict[bytes, None] = {}
        prefix = self.channel.encode()
        message = self.pubsub.get_message(timeout=timeout)
        # Subscription confirmations come as messages too (not ignored: None means no message).
        while message is not None:
            channel, event = message["channel"], message["data"]
            if (
                message["type"] == "pmessage"
                and event in self.notifications.events
                and channel.startswith(prefix)
            ):
                names[channel[len(prefix) :]] = None
            if len(names) >= BATCH:
                break
            message = self.pubsub.get_message(timeout=0)
        return list(names)

    def close(self) -> None:
        """After a failure: the subscription and every pooled connection go (a partition that
        silenced one silenced them all, and a command on one would wait for its timeout)."""
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
        self.r.connection_pool.disconnect()

    def handle(self, key: bytes) -> bool:
        """What a key event for `key` makes the router do: route it (a stop after a sweep).
        True once a stop has been routed."""
        stops = self.route_all([key])
        return self.sweep(stops) if stops else False

    def route_all(self, names: list[bytes]) -> list[bytes]:
        """Route the names: legal keys first, in contract order, then illegal input. A stop is
        not routed here but returned, for a sweep that routes everything else first."""
        stops = []
        for _, name in sorted(self.in_order(names), key=lambda pair: pair[0]):
            if keys.classify(name, self.meters).kind is Kind.STOP:
                stops.append(name)
            else:
                self.route(name)
        return stops

    def in_order(self, names: list[bytes]) -> list[tuple[int, bytes]]:
        """(rank, name) of the names to route: the contract's order, illegal input last."""
        ranked = []
        for name in names:
            kind = keys.classify(name, self.meters).kind
            if kind not in (Kind.OWN, Kind.FOO):
                ranked.append((RANK.get(kind, len(RANK)), name))
        return ranked

    def sweep(self, heard: list[bytes] | None = None) -> bool:
        """Route every key present, SCAN step by SCAN step, in bounded memory: a first pass
        routes the legal keys, in contract order (powerup first); a second the illegal input.
        Key events are routed between steps. A stop, found or heard (`heard`), goes last; one
        heard during a sweep starts it again, so that everything present goes first. True
        once a stop has been routed."""
        if self.notifications.working:
            self.notifications.enable()  # a restarted server forgets them; we do not
        found = Found(dict.fromkeys(heard or []))
        restarted = bool(heard)  # a sweep for a stop heard starts again no more
        legal_pass, cursor = True, 0
        while True:
            scanned = self.queues.scan(cursor, SCAN_COUNT, legal=legal_pass)
            for long in scanned.rejected:
                self.rejections.warning(
                    "rejected %s... (a name of %d bytes): %s",
                    logs.quoted(long.excerpt[: logs.MAX_SHOWN]),
                    long.length,
                    long.reason,
                )
            if legal_pass:
                self.hold_legal(scanned.names, found, last=scanned.cursor == 0)
            else:
                for name in scanned.names:
                    if keys.classify(name, self.meters).kind is Kind.ILLEGAL:
                        self.route(name)
            cursor = scanned.cursor
            if self.pubsub is not None and self.pubsub.subscribed:
                stops = self.route_all(self.heard(0.0))
                found.add_stops(stops)
                if stops and not restarted:
                    restarted, legal_pass, cursor = True, True, 0  # everything present first
                    found.held.clear()
                    continue
            if cursor == 0:
                if not legal_pass:
                    break
                legal_pass = False
        if not found.debug:
            self.debug.apply(None)  # a deleted debug key announces nothing: the sweep sees it
        return any(self.route(name) for name in found.stops)

    def hold_legal(self, names: list[bytes], found: Found, last: bool) -> None:
        """A first pass's step: legal keys are held, and routed in contract order at the end
        of the pass (or when BATCH are held); a stop waits for the end of the sweep."""
        for rank, name in self.in_order(names):
            kind = keys.classify(name, self.meters).kind
            if kind is Kind.STOP:
                found.add_stops([name])
            elif kind is not Kind.ILLEGAL:
                found.debug |= kind is Kind.DEBUG
                found.held.append((rank, name))
        if last or len(found.held) >= BATCH:
            self.route_all([name for _, name in sorted(found.held, key=lambda pair: pair[0])])
            found.held.clear()

    def route(self, key: bytes) -> bool:
        """Route one key (a stop too). True once a stop has been routed."""
        try:
            result = self.queues.route(key)
        except redis.ResponseError as exc:  # about this key, not an outage: log it, go on
            log.error("could not handle key %s: %s", logs.quoted(key), exc)
            return False
        if result.outcome == "rejected":
            self.rejections.warning(
                "rejected %s = %s: %s", logs.quoted(key), result.preview[:80], result.reason
            )
        elif result.outcome == "left" and result.kind is Kind.DEBUG:
            self.debug.apply(result.value)
        elif result.outcome in ("routed", "joined"):
            log.debug("%s %s", result.outcome, logs.quoted(key))
            if result.kind is Kind.STOP:
                log.info("stop: routed everything present, then the stop marker; exiting")
                return True
        return False
