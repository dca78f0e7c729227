"""The server's keyspace notifications, which tell the router of a new key within
milliseconds: switched on where the server lets us (CONFIG SET), and on again after a restarted
server forgot them; where it refuses, the router sweeps more often instead."""

from __future__ import annotations

import logging

import redis

SWEEP_INTERVAL = 5.0  # seconds between full sweeps while notifications work
SWEEP_INTERVAL_POLLING = 0.25  # ... and when the server refuses notifications

log = logging.getLogger("energy_worker.programs.router")


class Notifications:
    """The server's keyspace notifications: switched on where the server lets us, and on again
    after a restarted server forgot them."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.working: bool | None = None  # None: not tried yet
        self.new_key_events = True  # until the server says it has none (before Redis 7)
        self.events: set[bytes] = set()  # the events that announce a key: set, new

    def enable(self) -> list[str]:
        """Make sure the server publishes the key events we need; which ones we can hear."""
        try:
            current = self.r.config_get("notify-keyspace-events").get("notify-keyspace-events")
            flags = set(current or "")
            # "A" stands for all the classes of events, "$" (string commands) among them
            has = flags | (set("g$lshzxet") if "A" in flags else set())
            wanted = {"K", "$"} | ({"n"} if self.new_key_events else set())
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
        self.events = {event.encode() for event in events}
        if self.working is not True:
            log.info(
                "listening to keyspace notifications (%s), sweeping every %s s",
                ", ".join(events),
                SWEEP_INTERVAL,
            )
        self.working = True
        return events
