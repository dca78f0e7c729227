"""What the publisher tells Home Assistant, pure: topics, discovery payloads, state payloads,
the power shown while a meter is quiet, and when a message may go out. No I/O here.

Three sensors per meter (docs/home-assistant.md explains the choice):

- energy: kWh counted from pulses only (meter_status.pulses_counted / pulses per kWh),
  `total_increasing`. This is the one for the Energy dashboard. Home Assistant's long-term
  statistics add up every rise of such a sensor as consumption, and treat a drop of more than
  10 % as a meter replaced at zero (the whole new value then counts as consumption); a typed-in
  reading must be neither, so it never reaches this sensor.
- reading: the meter's reading as energy-worker keeps it (meter_status.kWh: typed-in readings
  included), kWh, no state class: shown, graphed in the history, never summed.
- power: W, `measurement`; the latest pulse's power, capped by the bound that falls toward
  zero while pulses stay away (docs/DOMAIN.md), as Grafana draws it.

Values are exact: a reading is a Decimal and is written as its decimal digits, never through a
float. Topic levels come from the settings and the installation id; both are checked here so a
`+`, `#` or empty level can never turn a topic into a wildcard or a different topic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from energy_worker.core.arithmetic import power_bound_w
from energy_worker.core.domain import MeterSnapshot

ENTITIES = ("energy", "reading", "power")
DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's default (its MQTT integration's setting)
TOPIC_PREFIX = "energy-worker"  # where the states go: <prefix>/<installation>/meter/<n>/<entity>
ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "None"  # Home Assistant's MQTT sensor sets the state to `unknown` on this payload
MIN_INTERVAL = 1.0  # seconds between two state messages of one entity, however fast pulses come
INSTALLATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a discovery node_id allows only these

ORIGIN = {"name": "energy-worker"}


MAX_PUBLISHED_BYTES = 32  # an energy state as format_kwh writes it: up to 10^12 kWh, 3 decimals
_PUBLISHED = re.compile(rb"[0-9]{1,13}(\.[0-9]{1,12})?")


def valid_prefix(prefix: str) -> bool:
    """A topic prefix of one or more levels: no wildcard, no empty level, no NUL."""
    return (
        bool(prefix)
        and not any(c in prefix for c in "+#\0")
        and all(prefix.split("/"))
        and len(prefix.encode()) <= 1024
    )


@dataclass(frozen=True)
class Layout:
    """Where everything goes. `installation` is the id stored once in PostgreSQL (table
    installation): unique ids and topics derive from it and the meter number, never from the
    meter's name, so they survive restarts and renames."""

    discovery_prefix: str
    topic_prefix: str
    installation: str

    def __post_init__(self) -> None:
        if not valid_prefix(self.discovery_prefix):
            raise ValueError(f"unusable discovery prefix {self.discovery_prefix!r}")
        if not valid_prefix(self.topic_prefix):
            raise ValueError(f"unusable topic prefix {self.topic_prefix!r}")
        if not INSTALLATION_ID.fullmatch(self.installation):
            raise ValueError(f"unusable installation id {self.installation!r}")

    @property
    def node_id(self) -> str:
        return f"energy_worker_{self.installation}"

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.installation}"

    @property
    def availability_topic(self) -> str:
        return f"{self.base}/status"

    @property
    def sync_topic(self) -> str:
        """Our own marker: when it comes back, the broker has sent every retained message of
        the subscriptions made before it."""
        return f"{self.base}/sync"

    def state_topic(self, meter: int, entity: str) -> str:
        return f"{self.base}/meter/{meter}/{entity}"

    def config_topic(self, meter: int, entity: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/meter_{meter}_{entity}/config"

    def unique_id(self, meter: int, entity: str) -> str:
        return f"{self.node_id}_meter_{meter}_{entity}"

    @property
    def config_wildcard(self) -> str:
        """Every discovery config this installation may have left retained."""
        return f"{self.discovery_prefix}/sensor/{self.node_id}/+/config"

    @property
    def state_wildcard(self) -> str:
        """Every state this installation may have left retained."""
        return f"{self.base}/meter/+/+"


def device(layout: Layout) -> dict[str, object]:
    """One device per installation; its entities carry the meters' names."""
    return {
        "identifiers": [layout.node_id],
        "name": "energy-worker",
        "manufacturer": "energy-worker",
        "model": "S0 pulse meters",
    }


def sensor_config(layout: Layout, meter: int, name: str, entity: str) -> dict[str, object]:
    """The discovery payload of one sensor (Home Assistant: MQTT sensor, discovery)."""
    config: dict[str, object] = {
        "name": f"{name} {entity}",
        "unique_id": layout.unique_id(meter, entity),
        "state_topic": layout.state_topic(meter, entity),
        "availability_topic": layout.availability_topic,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
        "device": device(layout),
        "origin": ORIGIN,
    }
    if entity == "energy":
        config.update(unit_of_measurement="kWh", device_class="energy")
        config["state_class"] = "total_increasing"
    elif entity == "reading":
        # No state class: Home Assistant keeps no statistics of it, so the Energy dashboard
        # cannot pick it, and a typed-in reading going up or down is shown, never summed.
        config.update(unit_of_measurement="kWh", device_class="energy")
    elif entity == "power":
        config.update(unit_of_measurement="W", device_class="power", state_class="measurement")
    else:
        raise ValueError(f"unknown entity {entity!r}")
    return config


def encode(payload: Mapping[str, object]) -> str:
    """Deterministic JSON: the same config is the same bytes, which Home Assistant ignores."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def discovery(layout: Layout, meters: Iterable[MeterSnapshot]) -> dict[str, str]:
    """Config topic -> retained payload, for every entity of every meter."""
    return {
        layout.config_topic(m.number, entity): encode(
            sensor_config(layout, m.number, m.name, entity)
        )
        for m in meters
        for entity in ENTITIES
    }


def format_kwh(value: Decimal) -> str:
    """The exact decimal digits of a reading: 279.971 stays "279.971"; no exponent (1E+3 is
    "1000"), no float, no trailing zeros."""
    if not value.is_finite():
        raise ValueError(f"not a reading: {value}")
    # format(..., "f") writes every digit the Decimal has (normalize() would round to the
    # context's 28 digits); only trailing zeros after the point are dropped.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def power_now_w(
    last_watt: int | None,
    max_power_w: int,
    pulses_per_kwh: int,
    last_pulse_ms: int | None,
    now_ms: int,
) -> int | None:
    """The power to show now: the latest pulse's power (the meter's maximum after a pulse that
    carried none), capped by what the meter can be drawing after `now - last pulse` without a
    pulse (meter.power_bound_w), so a meter that stops falls toward zero instead of freezing.
    None before the first pulse: nothing is known."""
    if last_pulse_ms is None:
        return None
    start = last_watt if last_watt is not None else max_power_w
    return min(start, power_bound_w(now_ms - last_pulse_ms, pulses_per_kwh))


def states(layout: Layout, meter: MeterSnapshot, now_ms: int) -> dict[str, str]:
    """State topic -> payload of one meter's three sensors at `now_ms`."""
    power = power_now_w(
        meter.last_watt, meter.max_power_w, meter.pulses_per_kwh, meter.last_pulse_ms, now_ms
    )
    return {
        layout.state_topic(meter.number, "energy"): format_kwh(meter.counted_kwh),
        layout.state_topic(meter.number, "reading"): format_kwh(meter.reading_kwh),
        layout.state_topic(meter.number, "power"): UNKNOWN if power is None else str(power),
    }


def throttle_wait(last_sent: float | None, now: float, interval: float = MIN_INTERVAL) -> float:
    """Seconds until an entity may publish again (0: now). At most one message per `interval`
    per entity, whatever the pulse rate: Home Assistant records every state change."""
    if last_sent is None:
        return 0.0
    return max(0.0, last_sent + interval - now)


def below_published(value: Decimal, published: Decimal | None) -> bool:
    """True when the pulse-counted energy is below what Home Assistant has already seen: a
    restored database or a changed pulse constant. Publishing it would be read as a new meter
    cycle (total_increasing), so it is held until the count passes the published value."""
    return published is not None and value < published


def parse_published(payload: bytes | bytearray) -> Decimal | None:
    """A retained energy state read back from the broker, or None if it is not one as
    format_kwh writes it (anyone on the broker may have written it: `1E+100` would hold the
    energy sensor back for ever, a megabyte of digits would cost the parse)."""
    if len(payload) > MAX_PUBLISHED_BYTES or not _PUBLISHED.fullmatch(bytes(payload)):
        return None
    return Decimal(payload.decode("ascii"))


def stale(retained: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """Retained topics of this installation that no configured meter uses any more: an empty
    retained message deletes each (a config: Home Assistant removes the entity)."""
    keep = set(wanted)
    return sorted(t for t in set(retained) if t not in keep)
