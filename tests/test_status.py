"""Which meters' stored row a commit writes (services/energy_worker/core/status.py) alone: only a
commit that did nothing but move the latest history row, which then holds every per-pulse
column, leaves it unwritten. Whether the view then shows what the table showed is
tests/test_status_view.py's, against PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from energy_worker.core import status
from energy_worker.core.domain import MeterRecord, MeterState, Row, Run, at_time

T0 = 1_795_000_000_000  # ms since 1970
RUN = Run(reference_watt=2000, first_row=4, moving_row=5, latest_at_ms=T0)
BEFORE = MeterRecord(MeterState(10, 1000, 1800, T0), RUN, counted=10, repeated=1, over_max=2)
# One more pulse within the deadband: the run's moving row moves on to it.
AFTER = MeterRecord(
    MeterState(11, 2800, 1800, T0 + 1800),
    replace(RUN, latest_at_ms=T0 + 1800),
    counted=11,
    repeated=1,
    over_max=2,
)
KWH = Decimal("0.011")
MOVED = Row(1, 2000, 11, Decimal("0.011"), 2800, 1800, at_time(T0 + 1800), pulses=11)


def follows(
    before: MeterRecord = BEFORE,
    after: MeterRecord = AFTER,
    row: Row | None = MOVED,
    kwh: Decimal = KWH,
) -> bool:
    rows = {} if row is None else {5: row}
    return status.follows_history(before, after, rows, kwh)


def test_a_commit_that_only_moved_the_latest_row_is_not_stored():
    assert follows()
    assert status.to_store({1: BEFORE}, {1: AFTER}, {5: MOVED}, {1: KWH}) == {}


def test_the_moved_rows_power_is_no_per_pulse_state():
    # The row keeps the run's reference power; the stored row has no power column of its own.
    assert follows(row=replace(MOVED, watt=2050))
    assert follows(row=replace(MOVED, watt=None))


@pytest.mark.parametrize(
    ("case", "after"),
    [
        ("a new run (new rows)", replace(AFTER, run=Run(2600, 6, None, T0 + 1800))),
        ("a new run's first row only", replace(AFTER, run=replace(RUN, moving_row=None))),
        ("the run's second row is new", replace(AFTER, run=replace(RUN, moving_row=7))),
        ("the run's first row changed", replace(AFTER, run=replace(RUN, first_row=3))),
        ("another reference power", replace(AFTER, run=replace(RUN, reference_watt=2100))),
        ("no run any more (power-up)", replace(AFTER, run=None)),
        ("a pulse delivered twice", replace(AFTER, repeated=2)),
        ("a power reading over the maximum", replace(AFTER, over_max=3)),
        ("nothing counted (a repeat only)", replace(AFTER, counted=10)),
        ("no wall time of the last pulse", replace(AFTER, state=replace(AFTER.state,
                                                                        last_at_ms=None))),
    ],
)  # fmt: skip
def test_a_commit_that_changed_more_than_the_latest_row_is_stored(case: str, after: MeterRecord):
    assert not follows(after=after), case
    assert status.to_store({1: BEFORE}, {1: after}, {5: MOVED}, {1: KWH}) == {1: after}, case


@pytest.mark.parametrize(
    ("case", "row"),
    [
        ("a typed-in reading", replace(MOVED, typed_in=True)),
        ("another pulse count", replace(MOVED, pulses=12)),
        ("another meter count", replace(MOVED, counts=12)),
        ("another reading", replace(MOVED, kwh=Decimal("0.012"))),
        ("the same reading at another scale", replace(MOVED, kwh=Decimal("0.0110"))),
        ("another millis", replace(MOVED, millis=2801)),
        ("another period", replace(MOVED, period=1801)),
        ("another wall time", replace(MOVED, at=at_time(T0 + 1801))),
        ("the row was not moved", None),
    ],
)
def test_a_row_that_does_not_hold_the_meters_state_is_stored(case: str, row: Row | None):
    assert not follows(row=row), case


@pytest.mark.parametrize(("row_kwh", "kwh"), [("1.0", "1.00"), ("1.00", "1.0"), ("1", "1.0")])
def test_a_reading_of_the_same_value_at_another_scale_is_stored(row_kwh: str, kwh: str):
    # Equal as numbers, but the view would show the row's text: numeric keeps its scale.
    assert Decimal(row_kwh) == Decimal(kwh)
    assert not follows(row=replace(MOVED, kwh=Decimal(row_kwh)), kwh=Decimal(kwh))
    assert follows(row=replace(MOVED, kwh=Decimal(kwh)), kwh=Decimal(kwh))


def test_a_meter_without_a_run_before_is_stored():
    assert not follows(before=replace(BEFORE, run=None))


def test_a_meter_not_committed_before_is_stored_and_the_others_only_if_they_must_be():
    stays = MeterRecord(MeterState(3, 10, 10, T0), Run(100, 1, 2, T0), counted=3)
    moved = replace(
        stays, state=MeterState(4, 20, 10, T0 + 10), run=Run(100, 1, 2, T0 + 10), counted=4
    )
    moved_row = Row(2, 100, 4, Decimal("0.004"), 20, 10, at_time(T0 + 10), pulses=4)
    new = MeterRecord(MeterState(1, 5, -1, T0), Run(None, 9), counted=1)
    stored = status.to_store(
        committed={1: BEFORE, 2: stays},
        records={1: AFTER, 2: moved, 3: new},
        moved_rows={5: MOVED, 2: moved_row},
        kwh={1: KWH, 2: Decimal("0.004"), 3: Decimal("0.001")},
    )
    assert stored == {3: new}
    # The same meter 2, had its row not been moved with it, is stored after all.
    assert status.to_store({2: stays}, {2: moved}, {}, {2: Decimal("0.004")}) == {2: moved}
