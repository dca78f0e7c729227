"""The meter arithmetic (docs/DOMAIN.md), pure: no I/O, no floats.

A meter's state is its pulse count and the last pulse it saw. `pulse` turns one Arduino
millis() value into the new state and what it means: counted or not, and the power it shows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from energy_worker.core.domain import MeterState

WRAP = 2**32  # millis() wraps after about 49.7 days
WATT_MS_PER_KWH = 3_600_000_000  # 1 kWh = 3.6e9 W*ms
KWH_PLACES = Decimal("1e-9")  # used only for pulse constants that do not divide evenly
# Slack when telling a wrap of millis() from an unannounced reboot: a period longer than the
# wall time between the two pulses plus this cannot be real (the earlier pulse may have waited
# in the Arduino's buffer while nobody cleared its key).
REBOOT_SLACK_MS = 3_600_000


def kwh(counts: int, pulses_per_kwh: int) -> Decimal:
    """counts / pulses_per_kwh, exact whenever the quotient is a finite decimal (it is for
    every usual S0 constant: 100, 400, 500, 800, 1000, 2000, ...)."""
    with localcontext() as ctx:
        ctx.prec = 60
        value = Decimal(counts) / Decimal(pulses_per_kwh)
        if value * pulses_per_kwh == counts:
            return value.normalize() if value else Decimal(0)
        return value.quantize(KWH_PLACES, rounding=ROUND_HALF_EVEN)


def power_w(period_ms: int, pulses_per_kwh: int) -> int:
    """W = 3_600_000_000 / (period_ms * pulses_per_kwh), rounded to the nearest watt."""
    den = period_ms * pulses_per_kwh
    return (2 * WATT_MS_PER_KWH + den) // (2 * den)


def power_bound_w(quiet_ms: int, pulses_per_kwh: int) -> int:
    """The most a meter can be drawing when it has been quiet for quiet_ms: no pulse means
    low power, not zero."""
    return power_w(max(quiet_ms, 1), pulses_per_kwh)


def period_ms(millis: int, previous: int) -> int:
    return (millis - previous) % WRAP


def counts_for_reading(reading_x100: int, pulses_per_kwh: int) -> tuple[int, bool]:
    """Pulse count for a typed-in reading (kWh x 100); exact is False when it had to round."""
    numerator = reading_x100 * pulses_per_kwh
    counts, rest = divmod(numerator, 100)
    if 2 * rest >= 100:
        counts += 1
    return counts, rest == 0


class Outcome(enum.Enum):
    POWER = "power"  # counted, with a power reading
    FIRST = "first"  # counted; no predecessor (first pulse, or after powerup), so no power
    REBOOT = "reboot"  # counted; millis went back in a way only a reboot explains; no power
    OVER_MAX = "over_max"  # counted; the power is above the meter's maximum, so not stored
    REPEAT = "repeat"  # same millis as the previous pulse: one pulse delivered twice


@dataclass(frozen=True)
class PulseResult:
    state: MeterState
    outcome: Outcome
    watt: int | None  # the power reading to store, if any
    period: int  # -1 when there is no predecessor

    @property
    def counted(self) -> bool:
        return self.outcome is not Outcome.REPEAT


def pulse(
    state: MeterState, millis: int, at_ms: int, pulses_per_kwh: int, max_power_w: int
) -> PulseResult:
    """One pulse of a meter at Arduino time `millis`, taken from Redis at wall time `at_ms`."""
    if state.last_millis is not None and millis == state.last_millis:
        return PulseResult(state, Outcome.REPEAT, None, state.last_period)
    counted = replace(state, counts=state.counts + 1, last_millis=millis, last_at_ms=at_ms)
    if state.last_millis is None:
        return PulseResult(replace(counted, last_period=-1), Outcome.FIRST, None, -1)
    period = period_ms(millis, state.last_millis)
    if state.last_at_ms is not None and period > max(at_ms - state.last_at_ms, 0) + REBOOT_SLACK_MS:
        return PulseResult(replace(counted, last_period=-1), Outcome.REBOOT, None, -1)
    counted = replace(counted, last_period=period)
    watt = power_w(period, pulses_per_kwh)
    if watt > max_power_w:
        return PulseResult(counted, Outcome.OVER_MAX, None, period)
    return PulseResult(counted, Outcome.POWER, watt, period)


def powerup(state: MeterState) -> MeterState:
    """The Arduino restarted millis() at 0: the next pulse has no predecessor."""
    return replace(state, last_millis=None, last_period=-1)


def set_reading(
    state: MeterState, reading_x100: int, pulses_per_kwh: int
) -> tuple[MeterState, bool]:
    """A person typed in the meter's reading; the pulse baseline is kept."""
    counts, exact = counts_for_reading(reading_x100, pulses_per_kwh)
    return replace(state, counts=counts), exact
