"""The router: takes every key the webhook writes into Redis, within milliseconds.

Its job, forever:
  1. hear about new keys from Redis keyspace notifications (enabled where the server lets us),
     and sweep all keys with SCAN now and then for anything the notifications missed;
  2. move each key atomically, stamped with the time it was taken, onto the processor's work
     list or the pusher's list (queue.Queues.route, which reads the key as keys.py does);
  3. remove illegal input, with one log line and a copy in the dead-letter list;
  4. on `stop`: route everything else present, then the stop marker, and exit 0 (the stop
     protocol, docs/CONTRACT.md).
`foo` and `debug` stay for the webhook; `debug` switches verbose logging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.client

from . import config, keys, logs, program
from .keys import Kind
from .outage import Outage
from .queue import Queues
from .redisconn import HEALTH_CHECK_S, connect_redis

SWEEP_INTERVAL = 5.0  # seconds between full sweeps while notifications work
SWEEP_INTERVAL_POLLING = 0.25  # ... and when the server refuses notifications
# redis-py PINGs a subscription that was quiet for HEALTH_CHECK_S, but does not miss a PONG
# that never comes: a silent partition. A subscription whose PING is unanswered this long after
# it was due is taken for dead.
PONG_TIMEOUT = 3 * HEALTH_CHECK_S

log = logging.getLogger("energy_worker.router")


class Notifications:
    """The server's keyspace notifications: switched on where the server lets us, and on again
    after a restarted server forgot them."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.working: bool | None = None  # None: not tried yet
        self.new_key_events = True  # until the server says it has none (before Redis 7)

    def enable(self) -> list[str]:
        """Make sure the server publishes the key events we need; which ones we can hear."""
        try:
            current = self.r.config_get("notify-keyspace-events").get("notify-keyspace-events")
            flags = set(current or "")
            # "A" stands for all the classes of events, "$" (string commands) among them
            has = flags | (set("g$lshzxet") if "A" in flags else set())
            wanted = {"E", "$"} | ({"n"} if self.new_key_events else set())
            if not wanted <= has:
                wanted |= flags
                if self.working:
                    log.warning("keyspace notifications were off (a restarted server?); on again")
                try:
                    self.r.config_set("notify-keyspace-events", "".join(sorted(wanted)))
                except redis.ResponseError:
                    if not self.new_key_events:
                        raise
                    self.new_key_events = False  # servers before 7.0 know no new-key events
                    wanted.discard("n")
                    self.r.config_set("notify-keyspace-events", "".join(sorted(wanted)))
        except redis.ResponseError as exc:  # CONFIG refused (managed server, ACL)
            if self.working is not False:
                log.warning(
                    "keyspace notifications unavailable (%s); sweeping every %s s instead",
                    exc,
                    SWEEP_INTERVAL_POLLING,
                )
            self.working = False
            return []
        events = ["set", "new"] if self.new_key_events else ["set"]
        if self.working is not True:
            log.info(
                "listening to keyspace notifications (%s), sweeping every %s s",
                ", ".join(events),
                SWEEP_INTERVAL,
            )
        self.working = True
        return events


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
        self.db_number = db_number
        self.meters = meters
        self.queues = Queues(r, meters)
        self.notifications = Notifications(r)
        self.debug = logs.DebugSwitch(log)
        self.sweep_interval = sweep_interval
        self.clock = clock
        self.pubsub: redis.client.PubSub | None = None
        self.next_sweep = 0.0

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
        wait = max(self.next_sweep - self.clock(), 0.0)
        if max_wait is not None:
            wait = min(wait, max_wait)
        assert self.pubsub is not None
        if self.pubsub.subscribed:
            # woken at least as often as the health check is due, to send it and miss its answer
            message = self.pubsub.get_message(timeout=min(wait, HEALTH_CHECK_S))
            while message is not None:
                if self.handle(message["data"]):
                    return True
                message = self.pubsub.get_message(timeout=0)
            self.check_alive(self.pubsub)
        elif wait > 0:
            time.sleep(wait)
        if self.clock() >= self.next_sweep:
            if self.sweep():
                return True
            self.next_sweep = self.clock() + self.sweep_interval
        return False

    def listen(self) -> None:
        """Subscribe to the events that announce webhook keys: SET, and new keys of any type."""
        self.pubsub = self.r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        events = self.notifications.enable()
        if events:
            self.pubsub.subscribe(*(f"__keyevent@{self.db_number}__:{event}" for event in events))
        else:
            self.sweep_interval = SWEEP_INTERVAL_POLLING

    def close(self) -> None:
        """After a failure: the subscription and every pooled connection go (a partition that
        silenced one silenced them all, and a command on one would wait for its timeout)."""
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
        self.r.connection_pool.disconnect()

    @staticmethod
    def check_alive(pubsub: redis.client.PubSub) -> None:
        """Raise ConnectionError when the subscription's health check went unanswered."""
        connection: Any = pubsub.connection  # redis-py's hint says it is always None
        if (
            connection is not None
            and pubsub.health_check_response_counter > 0
            and time.monotonic() > connection.next_health_check + PONG_TIMEOUT
        ):
            raise redis.ConnectionError(
                f"no answer to a health check within {PONG_TIMEOUT:g} s (a silent partition?)"
            )

    def sweep(self) -> bool:
        """Route every key present: illegal input first, then in contract order (powerup first,
        stop last). True once a stop has been routed."""
        if self.notifications.working:
            self.notifications.enable()  # a restarted server forgets them; we do not
        found: list[tuple[int, bytes]] = []
        debug_seen = False
        for key in self.r.scan_iter(count=1000):
            kind = keys.classify(key, self.meters).kind
            debug_seen |= kind is Kind.DEBUG
            if kind in (Kind.OWN, Kind.FOO):
                continue
            order = keys.ROUTED.index(kind) if kind in keys.ROUTED else -1
            found.append((order, key))
        found.sort(key=lambda pair: pair[0])
        if not debug_seen:
            self.debug.apply(None)  # a deleted debug key announces nothing: the sweep sees it
        return any(self.handle(key, swept=True) for _, key in found)

    def handle(self, key: bytes, swept: bool = False) -> bool:
        """Route one key. True once a stop has been routed."""
        kind = keys.classify(key, self.meters).kind
        if kind in (Kind.OWN, Kind.FOO):
            return False
        if kind is Kind.STOP and not swept:
            return self.sweep()  # everything present goes first; the sweep routes stop last
        try:
            result = self.queues.route(key)
        except redis.ResponseError as exc:  # about this key, not an outage: log it, go on
            log.error("could not handle key %s: %s", logs.quoted(key), exc)
            return False
        if result.outcome == "rejected":
            log.warning(
                "rejected %s = %s: %s", logs.quoted(key), result.preview[:80], result.reason
            )
        elif result.outcome == "left" and result.kind is Kind.DEBUG:
            self.debug.apply(result.value)
        elif result.outcome == "routed":
            log.debug("routed %s", logs.quoted(key))
            if result.kind is Kind.STOP:
                log.info("stop: routed everything present, then the stop marker; exiting")
                return True
        return False


def main(_termination: program.Termination) -> int:
    settings = config.redis_settings()
    meters = frozenset(config.load_meters())
    r = connect_redis(settings)  # it never blocks: a subscription waits by itself
    router = Router(r, settings.db, meters)
    outage = Outage("Redis", log)
    log.info(
        "router started (Redis %s, meters %s)",
        settings.describe(),
        ", ".join(map(str, sorted(meters))),
    )
    while True:  # every move is atomic, so SIGTERM may end this anywhere
        try:
            if router.run_once():
                return program.EXIT_STOPPED
            outage.succeeded()
        except redis.RedisError as exc:
            router.close()
            outage.failed(exc)


if __name__ == "__main__":
    program.run("router", main)
