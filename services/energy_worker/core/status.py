"""Which meters' stored state (meter_status_stored) a commit must write, pure.

meter_status is a view (schema version 10): the stored row, overlaid with the meter's latest
history row (upper_index) where that row holds more counted pulses than the stored row
(consumption.pulses only grows with counted pulses, and only a counted pulse moves a row). After a
counted pulse that row holds every per-pulse column: meter_counts, kWh, pulse_time_stamp,
pulse_period, cor_time_stamp, pulses_counted, and time_stamp (both are stamped now() in the
same transaction). So a meter whose commit only moved its latest row needs no write of its
stored row: the view shows what the table showed. Anything else (a new row, a power-up, a
typed-in reading, a repeated or rejected pulse) writes the stored row, which the view then
shows until the row moves again.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from energy_worker.core.domain import MeterRecord, Row, at_time


def follows_history(
    before: MeterRecord, after: MeterRecord, moved_rows: Mapping[int, Row], kwh: Decimal
) -> bool:
    """Whether the view shows `after` without a write of the stored row: the commit moved the
    meter's latest row, the row holds all of `after`'s per-pulse state (its reading `kwh`),
    and nothing else changed since `before` (the committed record)."""
    if before.run is None or after.run is None or after.run.moving_row is None:
        return False
    run_before, run_after = before.run, after.run
    if (run_before.reference_watt, run_before.first_row, run_before.moving_row) != (
        run_after.reference_watt,
        run_after.first_row,
        run_after.moving_row,
    ):
        return False
    if (before.repeated, before.over_max) != (after.repeated, after.over_max):
        return False
    row = moved_rows.get(after.run.moving_row)
    state = after.state
    return (
        row is not None
        and not row.typed_in
        and after.counted > before.counted  # the view sees the row's count above the stored one
        and row.pulses == after.counted
        and row.counts == state.counts
        and row.kwh == kwh
        and str(row.kwh) == str(kwh)  # the same numeric text, scale included
        and row.millis == state.last_millis
        and row.period == state.last_period
        and state.last_at_ms is not None
        and row.at == at_time(state.last_at_ms)
    )


def to_store(
    committed: Mapping[int, MeterRecord],
    records: Mapping[int, MeterRecord],
    moved_rows: Mapping[int, Row],
    kwh: Mapping[int, Decimal],
) -> dict[int, MeterRecord]:
    """The touched meters whose stored row the commit writes (as the table was written: every
    touched meter, but those the view shows already)."""
    return {
        no: rec
        for no, rec in records.items()
        if no not in committed or not follows_history(committed[no], rec, moved_rows, kwh[no])
    }
