"""How the command shows things to a person: ages, local times, tables, kWh (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from energy_worker.core.domain import EPOCH_START


def age(seconds: float | None) -> str:
    """'0.4 s', '12 s', '5 min', '3 h 2 min', '2 d 4 h'; '-' for none."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def local(at: datetime | None, tz: ZoneInfo) -> str:
    """A time as the person's clock shows it (TZ), to the second."""
    if at is None:
        return "-"
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def from_ms(ms: int) -> datetime:
    """A time stamp in ms since 1970 (as Redis entries carry them)."""
    return EPOCH_START + timedelta(milliseconds=ms)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def kwh(value: Decimal, pulses_per_kwh: int | None = None) -> str:
    """A reading to the meter's resolution, one pulse (1000 pulses/kWh: 0.010), at least two
    decimals; without a pulse constant, or for one whose pulse is no finite decimal, as
    stored, with trailing zeros beyond two decimals dropped."""
    places = decimals(pulses_per_kwh) if pulses_per_kwh else None
    if places is not None and value == value.quantize(Decimal(1).scaleb(-places)):
        return f"{value.quantize(Decimal(1).scaleb(-places)):f}"
    text = f"{value:f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def decimals(pulses_per_kwh: int) -> int | None:
    """Decimals of one pulse in kWh (at least 2), None if it has no finite decimal form."""
    for places in range(2, 10):
        if 10**places % pulses_per_kwh == 0:
            return places
    return None


def watts(value: int | None) -> str:
    return "-" if value is None else f"{value} W"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


EIGHTHS = ("", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589")  # ▏ to ▉
FULL = "\u2588"  # █


def bar(value: Decimal | None, most: Decimal, width: int) -> str:
    """A bar of Unicode blocks, `width` long for `most`, to an eighth of a block; any value
    above zero shows at least an eighth. Exact: no float."""
    if value is None or value <= 0 or most <= 0:
        return ""
    eighths = int((value * width * 8 / most).to_integral_value(ROUND_HALF_UP))
    eighths = min(max(eighths, 1), width * 8)
    return FULL * (eighths // 8) + EIGHTHS[eighths % 8]
