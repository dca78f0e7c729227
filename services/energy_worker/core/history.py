"""The power history's deadband, pure (docs/DOMAIN.md, "Storage").

A run is a stretch of pulses whose power stays within deviation_pct of the power of the pulse
that started it. A run is stored as its first row and a moving row that follows each later
pulse, so a plateau costs two rows and the latest count is always stored.
One addition to the original: the moving row is not moved across a quarter-hour boundary (UTC,
so local hours in every time zone); a new one is started instead. Then the last pulse before
every boundary is stored, and hourly and daily totals read exact readings from the history, at
a cost of at most four rows per meter per hour.
A pulse without a power reading (watt None) starts a run of its own kind: power-less pulses in a
row share one run, and the next real reading starts anew.
"""

from __future__ import annotations

import enum
from decimal import Decimal

from energy_worker.core.domain import Run

SLOT_MS = 15 * 60 * 1000


class Place(enum.Enum):
    NEW_RUN = "new_run"  # insert a row that starts a new run
    NEW_MOVING = "new_moving"  # insert a row that becomes the run's (new) moving row
    MOVE = "move"  # update the run's moving row to this pulse


def in_band(reference: int | None, watt: int | None, deviation_pct: Decimal) -> bool:
    if reference is None or watt is None:
        return reference is None and watt is None
    return abs(watt - reference) * 100 <= reference * deviation_pct


def slot(at_ms: int) -> int:
    """The quarter hour a time belongs to, its end included: a pulse exactly at a boundary is
    the last of the quarter hour before it, so the reading at the boundary counts it."""
    return (at_ms - 1) // SLOT_MS


def place(
    run: Run | None, watt: int | None, deviation_pct: Decimal, at_ms: int, typed_in: bool = False
) -> Place:
    """Where the row of a pulse (or of a typed-in reading) goes. A typed-in reading always
    starts a run: its row is never moved, and never takes the place of a pulse's row."""
    if run is None or typed_in or not in_band(run.reference_watt, watt, deviation_pct):
        return Place.NEW_RUN
    if run.moving_row is None or run.latest_at_ms is None:
        return Place.NEW_MOVING
    if slot(at_ms) != slot(run.latest_at_ms):
        return Place.NEW_MOVING  # keep the last pulse before the boundary
    return Place.MOVE
