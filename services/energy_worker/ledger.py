"""Applies a batch of work items to the meters, in memory: the processor's arithmetic, apart
from its I/O. The result is a Plan: the rows to insert and update and the new meter states,
which the processor writes in one transaction.

New rows get temporary negative indexes; the processor swaps in real ones before writing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

from . import history, meter
from .config import Meter
from .keys import Kind
from .queue import Item
from .store import MeterRecord, Row, at_time

log = logging.getLogger("energy_worker.ledger")


def already_done(item: Item, done: Mapping[str, int]) -> bool:
    """Was this item committed before? `done` holds the last committed sequence number of
    each epoch (one Redis dataset); numbers rise within an epoch. No clock is involved, so a
    Pi whose clock starts behind after a reboot cannot make new items look old."""
    return item.seq <= done.get(item.epoch, 0)


@dataclass
class Plan:
    records: dict[int, MeterRecord] = field(default_factory=dict)  # touched meters only
    new_rows: dict[int, Row] = field(default_factory=dict)  # by temporary index (< 0)
    moved_rows: dict[int, Row] = field(default_factory=dict)  # by existing index
    done: dict[str, int] = field(default_factory=dict)  # epoch -> last seq, after this batch
    last: tuple[str, int] | None = None  # the last item the batch commits
    consumed: int = 0  # items of the batch this plan covers (through a stop)
    stop: bool = False
    skipped: int = 0  # items committed before (a crash between commit and ack)
    unusable: list[tuple[Item, str]] = field(default_factory=list)

    def rows_of(self, index: int) -> dict[int, Row]:
        return self.new_rows if index < 0 else self.moved_rows

    def remap(self, real: dict[int, int]) -> None:
        """Replace temporary indexes by the real ones."""
        self.new_rows = {real[i]: row for i, row in self.new_rows.items()}

        def fix(index: int | None) -> int | None:
            return real.get(index, index) if index is not None else None

        for no, rec in self.records.items():
            run = rec.run
            if run is not None:
                run = replace(
                    run,
                    first_row=real.get(run.first_row, run.first_row),
                    second_row=fix(run.second_row),
                )
            self.records[no] = replace(rec, run=run, upper_index=fix(rec.upper_index))


def plan_batch(
    items: list[Item],
    meters: dict[int, Meter],
    records: dict[int, MeterRecord],
    done: Mapping[str, int],
) -> Plan:
    """What the batch does. `records` and `done` are the committed state; not modified."""
    plan = Plan(done=dict(done))
    next_temp = -1

    def record(no: int) -> MeterRecord:
        return plan.records.get(no) or records[no]

    def store(no: int, rec: MeterRecord, row: Row, watt: int | None, at_ms: int) -> MeterRecord:
        """Place a row in the history (history.place) and return the meter's new record."""
        nonlocal next_temp
        run = rec.run
        where = history.place(run, watt, meters[no].deviation_pct, at_ms, row.typed_in)
        if where is history.Place.MOVE_SECOND and run and run.second_row is not None:
            plan.rows_of(run.second_row)[run.second_row] = row
            return replace(rec, run=replace(run, latest_at_ms=at_ms), upper_index=run.second_row)
        index, next_temp = next_temp, next_temp - 1
        plan.new_rows[index] = row
        if where is history.Place.SECOND and run is not None:
            run = replace(run, second_row=index, latest_at_ms=at_ms)
        else:
            run = history.Run(watt, index, None, at_ms)
        return replace(rec, run=run, upper_index=index)

    for item in items:
        plan.consumed += 1
        if already_done(item, plan.done):
            plan.skipped += 1
            if item.kind is Kind.STOP:  # committed, but its acknowledgement was lost
                plan.stop = True
                break
            continue
        plan.done[item.epoch] = item.seq
        plan.last = (item.epoch, item.seq)
        if item.kind is Kind.STOP:
            plan.stop = True
            break
        if item.kind is Kind.POWERUP:
            for no in meters:
                rec = record(no)
                plan.records[no] = replace(rec, state=meter.powerup(rec.state))
            log.info("powerup: the Arduino restarted; next pulse of each meter sets its baseline")
            continue
        no = item.meter
        if no is None or no not in meters or no not in records:
            plan.unusable.append((item, f"meter {no} is not configured in PostgreSQL"))
            continue
        m = meters[no]
        rec = record(no)
        at = at_time(item.at_ms)
        if item.kind is Kind.METERCOUNT:
            state, exact = meter.set_reading(rec.state, int(item.value), m.pulses_per_kwh)
            if not exact:
                log.warning(
                    "meter %s: reading %s rounded to %s pulses (%s pulses/kWh)",
                    no,
                    item.value,
                    state.counts,
                    m.pulses_per_kwh,
                )
            log.info(
                "meter %s set to %s kWh by a typed-in reading",
                no,
                meter.kwh(state.counts, m.pulses_per_kwh),
            )
            row = Row(
                no,
                None,
                state.counts,
                meter.kwh(state.counts, m.pulses_per_kwh),
                state.last_millis,
                -1,
                at,
                typed_in=True,
            )
            plan.records[no] = store(no, replace(rec, state=state), row, None, item.at_ms)
            continue
        # a pulse
        result = meter.pulse(
            rec.state, int(item.value), item.at_ms, m.pulses_per_kwh, m.max_power_w
        )
        outcome = result.outcome
        if outcome is meter.Outcome.REPEAT:
            log.info("meter %s: millis %s delivered twice; counted once", no, item.value)
            plan.records[no] = replace(rec, repeated=rec.repeated + 1)
            continue
        if outcome is meter.Outcome.OVER_MAX:
            log.warning(
                "meter %s: %s W from a %s ms period is above its maximum of %s W; "
                "pulse counted, power not stored",
                no,
                meter.power_w(result.period, m.pulses_per_kwh),
                result.period,
                m.max_power_w,
            )
            rec = replace(rec, rejected=rec.rejected + 1)
        elif outcome is meter.Outcome.REBOOT:
            log.warning(
                "meter %s: millis went from %s to %s, which only a reboot explains; "
                "pulse counted as the new baseline",
                no,
                rec.state.last_millis,
                item.value,
            )
        state = result.state
        row = Row(
            no,
            result.watt,
            state.counts,
            meter.kwh(state.counts, m.pulses_per_kwh),
            state.last_millis,
            result.period,
            at,
        )
        rec = replace(rec, state=state, counted=rec.counted + 1)
        plan.records[no] = store(no, rec, row, result.watt, item.at_ms)
    return plan


def kwh_of(plan: Plan, meters: dict[int, Meter]) -> dict[int, Decimal]:
    return {
        no: meter.kwh(rec.state.counts, meters[no].pulses_per_kwh)
        for no, rec in plan.records.items()
    }
