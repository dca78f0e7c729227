"""The deadband of the power history."""

from __future__ import annotations

from decimal import Decimal

from energy_worker.core.domain import Run
from energy_worker.core.history import SLOT_MS, Place, in_band, place

FIVE = Decimal(5)


def test_first_pulse_starts_a_run():
    assert place(None, 2000, FIVE, 0) is Place.NEW_RUN


def test_inside_the_band_adds_then_moves_the_moving_row():
    run = Run(2000, first_row=1)
    assert place(run, 2100, FIVE, 0) is Place.NEW_MOVING
    assert place(Run(2000, 1, 2, 1), 1900, FIVE, 1000) is Place.MOVE


def test_leaving_the_band_starts_a_new_run():
    assert place(Run(2000, 1, 2, 0), 2101, FIVE, 0) is Place.NEW_RUN
    assert place(Run(2000, 1, 2, 0), 1899, FIVE, 0) is Place.NEW_RUN


def test_power_less_pulses_form_runs_of_their_own():
    assert not in_band(2000, None, FIVE)
    assert not in_band(None, 2000, FIVE)
    assert in_band(None, None, FIVE)
    assert place(Run(None, 1), None, FIVE, 0) is Place.NEW_MOVING


def test_the_moving_row_stops_at_a_quarter_hour_boundary():
    boundary = SLOT_MS * 100
    run = Run(2000, 1, 2, latest_at_ms=boundary - 1)
    assert place(run, 2000, FIVE, boundary) is Place.MOVE  # the boundary's own pulse
    run = Run(2000, 1, 2, latest_at_ms=boundary)
    assert place(run, 2000, FIVE, boundary + 1) is Place.NEW_MOVING  # keeps the pulse at it


def test_a_typed_in_reading_starts_a_run_of_its_own():
    assert place(Run(None, 1, 2, 0), None, FIVE, 10, typed_in=True) is Place.NEW_RUN
