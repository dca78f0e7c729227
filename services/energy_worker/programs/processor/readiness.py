"""The processor's wait for Redis's disk: when an item taken may be committed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from energy_worker.core.domain import Item


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
