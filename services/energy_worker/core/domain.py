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
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from energy_worker.core.keys import Kind

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


# What a work item may hold (the router's Lua script writes every item; anything else on the
# lists is forged or damaged, and becomes a dead letter instead of reaching a decision).
MAX_EPOCH_CHARS = 64  # queue.new_epoch makes 22
MAX_SEQ = 2**63 - 1  # bigint
MAX_AT_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant a datetime holds
MAX_TEXT_CHARS = 1 << 20  # a field longer than this is not the router's
_EPOCH = re.compile(r"[0-9A-Za-z._:-]+")


@dataclass(frozen=True)
class Item:
    """One unit of work: a webhook key as the router took it. The router's Lua script writes it
    (adapters/lua/route_lib.lua, route()) as JSON on the Redis lists; decode() is its one reader."""

    epoch: str
    seq: int
    kind: Kind
    meter: int | None
    value: str
    at_ms: int  # when the router took the key (wall clock): for the history only
    key: str
    reason: str = ""  # Kind.REJECTED: why the router rejected the key (value: its preview)

    @classmethod
    def decode(cls, raw: bytes | str) -> Item:
        """Raises ValueError, with the reason, for anything that is not an item as the router
        writes it: whatever the bytes, nothing else escapes (a number too large for a float,
        JSON nested too deep, text that is not UTF-8)."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
            raise ValueError(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(
                epoch=_epoch(data["e"]),
                seq=_whole(data["s"], 1, MAX_SEQ, "s"),
                kind=Kind(data["k"]),
                meter=None if data.get("m") is None else _whole(data["m"], 0, 99, "m"),
                value=_text(data["v"], "v"),
                at_ms=_whole(data["at"], 0, MAX_AT_MS, "at"),
                key=_text(data["key"], "key"),
                reason=_text(data.get("reason", ""), "reason"),
            )
        except KeyError as exc:
            raise ValueError(f"no field {exc.args[0]!r}") from None
        except TypeError as exc:  # Kind() of an unhashable value
            raise ValueError(f"a field of the wrong type ({exc})") from None


@dataclass(frozen=True)
class DeadLetter:
    """Input that could not be used: a key the router rejected, or an item the processor could
    not apply. Kept in PostgreSQL (dead_letters) as well as in Redis's dead-letter list."""

    at: datetime  # when the router took the key
    key: str  # printable
    value: str  # printable, truncated (the router's preview)
    reason: str

    def __post_init__(self) -> None:
        # Whatever an item carried, PostgreSQL gets printable text of a bounded length: no NUL
        # byte or lone surrogate can make it refuse the batch (the router's are so already).
        for name in ("key", "value", "reason"):
            object.__setattr__(self, name, printable(getattr(self, name)))


def _whole(value: object, low: int, high: int, name: str) -> int:
    # bool is an int to Python, and 1e17 arrives as a float: neither is the router's number
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} is not a whole number from {low} to {high}")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} is not a text of at most {MAX_TEXT_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800")
        raise ValueError(f"{name} is not valid Unicode") from None
    return value


def _epoch(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_EPOCH_CHARS or not _EPOCH.fullmatch(value):
        raise ValueError("e is not an epoch")
    return value


def printable(text: str, limit: int = 4 * 200) -> str:
    """Foreign text as the router keeps it in a dead letter (adapters/lua/route_lib.lua,
    printable()): its first `limit` characters, every character but printable ASCII as \\xNN of
    its UTF-8 bytes. Text the router made printable stays as it is."""
    out = []
    for c in text[:limit]:
        if " " <= c <= "~":
            out.append(c)
        else:
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
    return "".join(out)


@dataclass(frozen=True)
class MeterSnapshot:
    """One meter as committed in PostgreSQL (meter_metadata, meter_status, meter_last_pulse):
    what the publisher shows of it."""

    number: int
    name: str
    pulses_per_kwh: int
    max_power_w: int
    reading_kwh: Decimal  # meter_status.kWh, typed-in readings included
    pulses_counted: int  # meter_status.pulses_counted: only ever grows with pulses
    last_pulse_ms: int | None  # wall time of the latest pulse (typed-in rows are no pulses)
    last_watt: int | None  # that pulse's power; None when it carried no power reading

    @property
    def counted_kwh(self) -> Decimal:
        """Energy counted from pulses alone: a typed-in reading does not move it."""
        from energy_worker.core.arithmetic import kwh  # noqa: PLC0415 - it imports this module

        return kwh(self.pulses_counted, self.pulses_per_kwh)
