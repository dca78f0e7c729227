"""What this installation left retained on the broker, read back at each connection: the
publisher subscribes to its own topics and publishes a marker on its sync topic; once the marker
comes back, the broker has sent every retained message of those subscriptions. Pure: the Broker
does the MQTT calls."""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection
from decimal import Decimal

from energy_worker.programs.publisher.ha_discovery import ENTITIES, Layout, parse_published, stale


class RetainedSync:
    """One connection's read-back, and the energy values Home Assistant has seen (kept across
    connections: it must never see one go down)."""

    def __init__(self, layout: Layout, configured: Collection[int], timeout: float) -> None:
        self.layout = layout
        self.configured = sorted(configured)
        self.timeout = timeout
        self.synced = False
        self.token = ""
        self.deadline = 0.0
        self.retained: set[str] = set()
        # What Home Assistant has seen of each meter's energy: the retained state read back at
        # each connection, and what was published since.
        self.seen_energy: dict[int, Decimal] = {}

    def start(self) -> str:
        """A new connection: forget the last one's read-back; the marker to publish."""
        self.retained.clear()
        self.synced = False
        self.token = secrets.token_hex(8)
        self.deadline = time.monotonic() + self.timeout
        return self.token

    def heard(self, topic: str, payload: bytes) -> bool:
        """A message read back; True when it is our marker, and the read-back is complete."""
        if topic == self.layout.sync_topic:
            return payload == self.token.encode() and not self.synced
        if self.synced or not payload:
            return False
        self.retained.add(topic)
        for no in self.configured:
            if topic == self.layout.state_topic(no, "energy"):
                seen = parse_published(payload)
                if seen is not None:
                    self.seen_energy[no] = max(seen, self.seen_energy.get(no, seen))
        return False

    def overdue(self) -> bool:
        return not self.synced and time.monotonic() >= self.deadline

    def stale_topics(self) -> list[str]:
        """Retained topics of meters no longer in the meter config. A configured meter missing
        from the database keeps its entities: only the config file removes a meter."""
        layout = self.layout
        wanted = {
            topic
            for no in self.configured
            for entity in ENTITIES
            for topic in (layout.config_topic(no, entity), layout.state_topic(no, entity))
        }
        return stale(self.retained, wanted)
