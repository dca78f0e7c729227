"""The deadband of the power history."""

from __future__ import annotations

from decimal import Decimal

from energy_worker.history import Place, Run, in_band, place

FIVE = Decimal(5)


def test_first_pulse_starts_a_run():
    assert place(None, 2000, FIVE) is Place.NEW_RUN


def test_inside_the_band_adds_then_moves_the_second_row():
    run = Run(2000, first_row=1)
    assert place(run, 2100, FIVE) is Place.SECOND
    assert place(Run(2000, 1, 2), 1900, FIVE) is Place.MOVE_SECOND


def test_leaving_the_band_starts_a_new_run():
    assert place(Run(2000, 1, 2), 2101, FIVE) is Place.NEW_RUN
    assert place(Run(2000, 1, 2), 1899, FIVE) is Place.NEW_RUN


def test_power_less_pulses_form_runs_of_their_own():
    assert not in_band(2000, None, FIVE)
    assert not in_band(None, 2000, FIVE)
    assert in_band(None, None, FIVE)
    assert place(Run(None, 1), None, FIVE) is Place.SECOND
