"""The router: takes every key the webhook writes into Redis, within milliseconds.

Its job, forever:
  1. hear about new keys from Redis keyspace notifications (enabled here where the server lets
     us), and sweep all keys with SCAN now and then for anything the notifications missed;
  2. classify each key (keys.classify) and move it, atomically and stamped with the time it was
     taken, onto the processor's work list or the pusher's list (queue.Queues.route);
  3. remove illegal input, with one log line and a copy in the dead-letter list;
  4. on `stop`: route everything else present, then the stop marker, and exit 0.
`foo` and `debug` stay for the webhook; `debug` switches verbose logging.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType

import redis
import redis.client

from . import config, keys, lifeline, logs
from .keys import Kind
from .queue import Queues
from .redisconn import connect_redis
from .retry import Outage

SWEEP_INTERVAL = 5.0  # seconds between full sweeps while notifications work
SWEEP_INTERVAL_POLLING = 0.25  # ... and when the server refuses notifications
EXIT_STOPPED = 0
EXIT_CONFIG = 2
EXIT_TERMINATED = 143

log = logging.getLogger("energy_worker.router")


class Stopped(Exception):
    """The stop marker has been routed."""


class Router:
    def __init__(
        self, r: redis.Redis, settings: config.RedisSettings, meters: frozenset[int]
    ) -> None:
        self.outage = Outage("Redis", log)
        self.r = r
        self.db = settings.db
        self.meters = meters
        self.queues = Queues(r)
        self.debug = logs.DebugSwitch(log)
        self.sweep_interval = SWEEP_INTERVAL
        self.notifications_state: bool | None = None
        self.new_key_events = True  # until the server says it has none (before Redis 7)

    def run(self) -> None:
        """Route until a stop has been routed (returns) or Redis fails (raises RedisError)."""
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            self.listen(pubsub)
            self.sweep()
            self.outage.succeeded()
            next_sweep = time.monotonic() + self.sweep_interval
            while True:
                wait = max(next_sweep - time.monotonic(), 0)
                message = pubsub.get_message(timeout=wait) if pubsub.subscribed else None
                if message is None and not pubsub.subscribed:
                    time.sleep(wait)
                while message is not None:
                    self.handle(message["data"])
                    message = pubsub.get_message(timeout=0)
                lifeline.check(log)
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.sweep_interval
        except Stopped:
            return
        finally:
            pubsub.close()

    def listen(self, pubsub: redis.client.PubSub) -> None:
        """Subscribe to the events that announce webhook keys: SET, and new keys of any type."""
        events = self.enable_notifications()
        if events:
            pubsub.subscribe(*(f"__keyevent@{self.db}__:{event}" for event in events))
        self.sweep_interval = SWEEP_INTERVAL if events else SWEEP_INTERVAL_POLLING

    def enable_notifications(self) -> list[str]:
        """Make sure the server publishes key events; which ones we can hear. Called again at
        every sweep: a restarted server has forgotten a setting made at run time."""
        try:
            flags = set(
                self.r.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
            )
            # "A" stands for all the classes of events, "$" (string commands) among them
            has = flags | (set("g$lshzxet") if "A" in flags else set())
            wanted = {"E", "$"} | ({"n"} if self.new_key_events else set())
            if not wanted <= has:
                wanted |= flags
                if self.notifications_state:
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
            if self.notifications_state is not False:
                log.warning(
                    "keyspace notifications unavailable (%s); sweeping every %s s instead",
                    exc,
                    SWEEP_INTERVAL_POLLING,
                )
            self.notifications_state = False
            return []
        events = ["set", "new"] if self.new_key_events else ["set"]
        if self.notifications_state is not True:
            log.info(
                "listening to keyspace notifications (%s), sweeping every %s s",
                ", ".join(events),
                SWEEP_INTERVAL,
            )
        self.notifications_state = True
        return events

    def sweep(self) -> None:
        """Route every key present, in contract order (powerup first, stop last)."""
        if self.notifications_state:
            self.enable_notifications()  # a restarted server forgets them; we do not
        found: list[tuple[int, bytes]] = []
        debug_seen = False
        for key in self.r.scan_iter(count=1000):
            name = _decoded(key)
            kind = Kind.ILLEGAL if name is None else keys.classify(name, self.meters).kind
            debug_seen |= kind is Kind.DEBUG
            if kind in keys.LEFT_ALONE and kind is not Kind.DEBUG:
                continue
            order = keys.ROUTED.index(kind) if kind in keys.ROUTED else len(keys.ROUTED)
            found.append((order, key))
        found.sort(key=lambda pair: pair[0])
        if not debug_seen:
            self.debug.apply(None)  # a deleted debug key announces nothing: the sweep sees it
        for _, key in found:
            self.handle(key, swept=True)

    def handle(self, key: bytes, swept: bool = False) -> None:
        try:
            self.route(key, swept)
        except redis.ResponseError as exc:  # about this key, not an outage: log it, go on
            log.error("could not handle key %s: %s", logs.shown(key), exc)

    def route(self, key: bytes, swept: bool) -> None:
        name = _decoded(key)
        if name is None:
            self.reject(key, Kind.ILLEGAL, None, "key is not UTF-8")
            return
        found = keys.classify(name, self.meters)
        if found.kind is Kind.DEBUG:
            self.follow_debug(key, name)
            return
        if found.kind in keys.LEFT_ALONE:
            return
        if found.kind is Kind.ILLEGAL:
            self.reject(key, found.kind, found.meter, found.reason)
            return
        if found.kind is Kind.STOP and not swept:
            self.sweep()  # everything present goes first; the sweep routes stop last
            return
        result = self.queues.route(key, found.kind, found.meter, name)
        if result.outcome == "rejected":
            log.warning(
                "rejected %s = %s: %s", logs.shown(name), result.preview[:80], result.reason
            )
        elif result.outcome == "routed":
            log.debug("routed %s", name)
            if found.kind is Kind.STOP:
                log.info("stop: routed everything present, then the stop marker; exiting")
                raise Stopped

    def follow_debug(self, key: bytes, name: str) -> None:
        """The webhook's switch stays in place; we follow it (and reject a malformed one)."""
        kind = self.r.type(key).decode()
        if kind == "none":
            self.debug.apply(None)  # deleted: back to normal logging
            return
        if kind != "string":
            self.reject(key, Kind.DEBUG, None, f"key holds a Redis {kind}, not a string")
            return
        value = self.r.get(key)
        if value is None:
            self.debug.apply(None)
        elif keys.value_problem(Kind.DEBUG, value.decode("utf-8", "replace")) is None:
            self.debug.apply(value)
        else:
            self.reject(key, Kind.DEBUG, None, "value is not 'true' or 'false'")

    def reject(self, key: bytes, kind: Kind, meter: int | None, reason: str) -> None:
        shown = logs.shown(key, limit=200)[1:-1]
        result = self.queues.route(key, kind, meter, shown, reject_reason=reason)
        if result.outcome == "rejected":
            log.warning("rejected %s = %s: %s", logs.shown(key), result.preview[:80], result.reason)


def _decoded(key: bytes) -> str | None:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Every move is atomic, so the router can stop anywhere.
    raise SystemExit(EXIT_TERMINATED)


def main() -> int:
    logs.setup("router")
    try:
        settings = config.redis_settings()
        meters = frozenset(config.load_meters())
    except config.ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    signal.signal(signal.SIGTERM, _on_sigterm)
    r = connect_redis(settings, blocking_timeout=SWEEP_INTERVAL)
    router = Router(r, settings, meters)
    log.info(
        "router started (Redis %s, meters %s)",
        settings.describe(),
        ", ".join(map(str, sorted(meters))),
    )
    while True:
        try:
            router.run()
            return EXIT_STOPPED
        except redis.RedisError as exc:
            router.outage.failed(exc)


if __name__ == "__main__":
    sys.exit(main())
