"""What the publisher sends to the broker, and when: discovery configs at once, each state at
most once per min_interval, and a meter's energy never below what Home Assistant has seen."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from energy_worker.core.domain import MeterSnapshot
from energy_worker.programs.publisher import ha_discovery
from energy_worker.programs.publisher.broker import Broker
from energy_worker.programs.publisher.ha_discovery import Layout, below_published, states

log = logging.getLogger("energy_worker.programs.publisher")


class Outgoing:
    """The throttle and the energy hold, across connections; the broker says what it sent."""

    def __init__(
        self, min_interval: float, clock: Callable[[], float], monotonic: Callable[[], float]
    ) -> None:
        self.min_interval = min_interval
        self.clock = clock  # wall time: the power's decay
        self.monotonic = monotonic  # the throttle
        self.next_due = math.inf  # a throttled state waits until then
        self.held: set[int] = set()  # meters whose energy waits to pass what HA has seen

    def publish(
        self,
        broker: Broker,
        layout: Layout,
        configs: dict[str, str],
        meters: dict[int, MeterSnapshot],
    ) -> None:
        """Send what changed: configs at once, states at most once per min_interval each."""
        for topic, payload in configs.items():
            if broker.sent.get(topic) != payload:
                broker.send(topic, payload)
        if not broker.check_sync():
            self.next_due = self.monotonic() + 0.05  # look again soon
            return
        now, now_ms = self.monotonic(), int(self.clock() * 1000)
        self.next_due = math.inf
        for meter in meters.values():
            energy_topic = layout.state_topic(meter.number, "energy")
            for topic, payload in states(layout, meter, now_ms).items():
                if broker.sent.get(topic) == payload:
                    continue
                if topic == energy_topic and self.hold_energy(meter, broker):
                    continue
                wait = ha_discovery.throttle_wait(broker.sent_at.get(topic), now, self.min_interval)
                if wait > 0:
                    self.next_due = min(self.next_due, now + wait)
                    continue
                broker.send(topic, payload, at=now)
                if topic == energy_topic:
                    broker.seen_energy[meter.number] = meter.counted_kwh

    def hold_energy(self, meter: MeterSnapshot, broker: Broker) -> bool:
        """Never show Home Assistant's total_increasing sensor going down (module doc of
        ha_discovery); say so once per meter."""
        seen = broker.seen_energy.get(meter.number)
        if below_published(meter.counted_kwh, seen):
            if meter.number not in self.held:
                self.held.add(meter.number)
                log.warning(
                    "meter %s: %s kWh counted is below the %s kWh Home Assistant has seen "
                    "(database restored? pulses_per_kwh changed?); its energy sensor waits "
                    "until the count passes it",
                    meter.number,
                    meter.counted_kwh,
                    seen,
                )
            return True
        if meter.number in self.held:
            self.held.discard(meter.number)
            log.info("meter %s: the energy count has passed what was published", meter.number)
        return False
