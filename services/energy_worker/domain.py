"""The domain's types, shared by the pure core and the parts that do I/O (no I/O here).

| type        | what                                                                   |
|-------------|------------------------------------------------------------------------|
| Meter       | one configured meter: its pulse constant, maximum power and deadband   |
| MeterState  | a meter's arithmetic state: its count and its latest pulse             |
| Run         | the power history's current deadband run of a meter                    |
| MeterRecord | everything `meter_status` holds for a meter                            |
| Row         | one row of the `consumption` history                                   |
| Item        | one work item: a webhook key as the router took it from Redis          |
| DeadLetter  | input that could not be used, with the reason (table dead_letters)     |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .keys import Kind

EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


def at_time(at_ms: int) -> datetime:
    """A wall time in ms since 1970 (as the router stamps items) as a datetime, exactly."""
    return EPOCH_START + timedelta(milliseconds=at_ms)


def ms_since_1970(at: datetime) -> int:
    return (at - EPOCH_START) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class Meter:
    number: int
    name: str
    pulses_per_kwh: int
    max_power_w: int
    deviation_pct: Decimal
    power_factor: Decimal = Decimal(1)


@dataclass(frozen=True)
class MeterState:
    counts: int = 0
    last_millis: int | None = None  # None: no predecessor known (first pulse, after powerup)
    last_period: int = -1
    last_at_ms: int | None = None  # wall time of the last counted pulse, ms since 1970


@dataclass(frozen=True)
class Run:
    """A stretch of pulses whose power stays within the deadband of the pulse that started it.
    It is stored as two consumption rows: the first, and one that moves forward to each later
    pulse (see history.py)."""

    reference_watt: int | None  # power of the pulse that started the run
    first_row: int  # consumption.index of the run's first row
    moving_row: int | None = None  # and of the row that follows its latest pulse, once it has one
    latest_at_ms: int | None = None  # when the pulse of the run's latest row happened

    @property
    def latest_row(self) -> int:
        """The row of the run's latest pulse (meter_status.upper_index, as the original named
        it)."""
        return self.first_row if self.moving_row is None else self.moving_row


@dataclass(frozen=True)
class MeterRecord:
    """What meter_status holds for one meter: its arithmetic state, its current run, tallies."""

    state: MeterState
    run: Run | None
    counted: int = 0  # pulses counted since the meter was configured
    repeated: int = 0  # pulses delivered twice
    over_max: int = 0  # power readings above the meter's maximum (pulse counted, power not)

    @property
    def latest_row(self) -> int | None:
        return None if self.run is None else self.run.latest_row


@dataclass
class Row:
    """A consumption row as the processor builds it."""

    meter_no: int
    watt: int | None  # None: the pulse carries no power reading
    counts: int
    kwh: Decimal
    millis: int | None
    period: int
    at: datetime
    # The meter's count of pulses counted (MeterRecord.counted) as of this row; a typed-in
    # reading leaves it as it was. The energy used between two rows is their difference
    # divided by the pulse constant; the difference of their kWh also holds typed-in readings.
    pulses: int
    typed_in: bool = False  # written for a typed-in meter reading, not a pulse


@dataclass(frozen=True)
class Item:
    """One unit of work: a webhook key as the router took it (JSON on the Redis lists; the
    router's Lua script in queue.py writes it, with the same field names)."""

    epoch: str
    seq: int
    kind: Kind
    meter: int | None
    value: str
    at_ms: int  # when the router took the key: when the pulse happened, to the millisecond
    key: str
    reason: str = ""  # Kind.REJECTED: why the router rejected the key (value: its preview)

    @classmethod
    def decode(cls, raw: bytes | str) -> Item:
        """Raises ValueError, KeyError or TypeError for anything that is not an item."""
        data: dict[str, Any] = json.loads(raw)
        return cls(
            epoch=str(data["e"]),
            seq=int(data["s"]),
            kind=Kind(data["k"]),
            meter=int(data["m"]) if data.get("m") is not None else None,
            value=str(data["v"]),
            at_ms=int(data["at"]),
            key=str(data["key"]),
            reason=str(data.get("reason", "")),
        )

    def encode(self) -> str:
        data: dict[str, Any] = {
            "e": self.epoch,
            "s": self.seq,
            "k": self.kind.value,
            "v": self.value,
            "at": self.at_ms,
            "key": self.key,
        }
        if self.meter is not None:
            data["m"] = self.meter
        if self.reason:
            data["reason"] = self.reason
        return json.dumps(data)


@dataclass(frozen=True)
class DeadLetter:
    """Input that could not be used: a key the router rejected, or an item the processor could
    not apply. Kept in PostgreSQL (dead_letters) as well as in Redis's dead-letter list."""

    at: datetime  # when the router took the key
    key: str  # printable
    value: str  # printable, truncated (the router's preview)
    reason: str
