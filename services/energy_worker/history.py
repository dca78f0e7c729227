"""The power history's deadband, pure (DOMAIN.md, "Storage").

A run is a stretch of pulses whose power stays within deviation_pct of the power of the pulse
that started it. A run is stored as at most two consumption rows: the row of its first pulse and
a second row that is moved forward to each later pulse. So each plateau costs two rows and the
latest count is always stored. A pulse without a power reading (watt None) starts a run of its
own kind: power-less pulses in a row share one run, and the next real reading starts anew.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal


class Place(enum.Enum):
    NEW_RUN = "new_run"  # insert a row that starts a new run
    SECOND = "second"  # insert the run's second row
    MOVE_SECOND = "move_second"  # update the run's second row to this pulse


@dataclass(frozen=True)
class Run:
    reference_watt: int | None  # power of the pulse that started the run
    first_row: int  # consumption.index of the run's first row
    second_row: int | None = None  # and of its second, once it has one


def in_band(reference: int | None, watt: int | None, deviation_pct: Decimal) -> bool:
    if reference is None or watt is None:
        return reference is None and watt is None
    return abs(watt - reference) * 100 <= reference * deviation_pct


def place(run: Run | None, watt: int | None, deviation_pct: Decimal) -> Place:
    if run is None or not in_band(run.reference_watt, watt, deviation_pct):
        return Place.NEW_RUN
    return Place.SECOND if run.second_row is None else Place.MOVE_SECOND
