"""Applies a batch of work items to the meters, in memory: the processor's arithmetic, apart
from its I/O. The result is a Plan: the rows to insert and update and the new meter states,
which the processor writes in one transaction.

Every kind the processor handles has a handler in HANDLERS; an item of any other kind is
unusable (it goes to the dead-letter list), never a pulse. Keys the router rejected arrive as
items of kind REJECTED and become dead letters too, so that PostgreSQL holds every one of them
exactly once (they are numbered like every item).

The plan comes out final, as the transaction writes it: new rows take their indexes from those
the processor reserved (consumption's sequence), in order, so the batch's oldest new row gets
the lowest; and every touched meter's reading is computed here, in Decimal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from energy_worker.core import arithmetic, history
from energy_worker.core.domain import DeadLetter, Item, Meter, MeterRecord, Row, Run, at_time
from energy_worker.core.keys import Kind, value_problem


def already_done(item: Item, done: Mapping[str, int]) -> bool:
    """Was this item committed before? `done` holds the last committed sequence number of
    each epoch (one Redis dataset); numbers rise within an epoch. No clock is involved, so a
    Pi whose clock starts behind after a reboot cannot make new items look old."""
    return item.seq <= done.get(item.epoch, 0)


@dataclass
class Plan:
    records: dict[int, MeterRecord] = field(default_factory=dict)  # touched meters only
    new_rows: dict[int, Row] = field(default_factory=dict)  # by index given to plan_batch
    moved_rows: dict[int, Row] = field(default_factory=dict)  # by existing index
    indexes_used: int = 0  # the first ones of those given to plan_batch
    readings: dict[int, Decimal] = field(default_factory=dict)  # kWh of each touched meter
    done: dict[str, int] = field(default_factory=dict)  # epoch -> last seq, after this batch
    last: tuple[str, int] | None = None  # the last item the batch commits
    consumed: int = 0  # items of the batch this plan covers (through a stop)
    stop: bool = False
    skipped: int = 0  # items committed before (a crash between commit and ack)
    unusable: list[tuple[Item, str]] = field(default_factory=list)
    # For the dead_letters table: the router's rejections and the unusable items.
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # What the processor logs once the plan is committed: (level, line), level "info" or
    # "warning". The ledger itself logs nothing, so a plan tried and rolled back says nothing.
    notes: list[tuple[str, str]] = field(default_factory=list)

    def note(self, level: str, message: str, *args: object) -> None:
        self.notes.append((level, message % args))

    def reject(self, item: Item, reason: str) -> None:
        """The processor cannot use this item: it is logged, kept in Redis's dead-letter list
        and in dead_letters."""
        self.unusable.append((item, reason))
        self.dead_letters.append(DeadLetter(at_time(item.at_ms), item.key, item.value, reason))

    def rows_of(self, index: int) -> dict[int, Row]:
        """Where the row of this index is written: inserted if this batch made it, else moved."""
        return self.new_rows if index in self.new_rows else self.moved_rows


class _Batch:
    """The plan of one batch while it is being built: the committed state, and the changes."""

    def __init__(
        self,
        meters: Mapping[int, Meter],
        records: Mapping[int, MeterRecord],
        plan: Plan,
        indexes: Sequence[int],
    ) -> None:
        self.meters = meters
        self.committed = records
        self.plan = plan
        self.indexes = indexes  # for new rows, in order

    def record(self, no: int) -> MeterRecord:
        return self.plan.records.get(no) or self.committed[no]

    def store(self, no: int, rec: MeterRecord, row: Row, watt: int | None, at_ms: int) -> None:
        """Place a row in the history (history.place) and keep the meter's new record."""
        run = rec.run
        where = history.place(run, watt, self.meters[no].deviation_pct, at_ms, row.typed_in)
        if where is history.Place.MOVE and run is not None and run.moving_row is not None:
            self.plan.rows_of(run.moving_row)[run.moving_row] = row
            self.plan.records[no] = replace(rec, run=replace(run, latest_at_ms=at_ms))
            return
        index = self.indexes[self.plan.indexes_used]  # one per item: never runs out
        self.plan.indexes_used += 1
        self.plan.new_rows[index] = row
        if where is history.Place.NEW_MOVING and run is not None:
            run = replace(run, moving_row=index, latest_at_ms=at_ms)
        else:
            run = Run(watt, index, None, at_ms)
        self.plan.records[no] = replace(rec, run=run)

    def meter_of(self, item: Item) -> int | None:
        """The item's meter, if both the config and PostgreSQL know it and its value is legal
        for its kind (as the router checked it); else it is unusable."""
        problem = value_problem(item.kind, item.value)
        if problem is not None:
            self.plan.reject(item, problem)
            return None
        no = item.meter
        if no is None or no not in self.meters or no not in self.committed:
            self.plan.reject(item, f"meter {no} is not configured in PostgreSQL")
            return None
        return no


def _pulse(batch: _Batch, item: Item) -> None:
    no = batch.meter_of(item)
    if no is None:
        return
    m = batch.meters[no]
    rec = batch.record(no)
    result = arithmetic.pulse(
        rec.state, int(item.value), item.at_ms, m.pulses_per_kwh, m.max_power_w
    )
    outcome = result.outcome
    if outcome is arithmetic.Outcome.REPEAT:
        batch.plan.note("info", "meter %s: millis %s delivered twice; counted once", no, item.value)
        batch.plan.records[no] = replace(rec, repeated=rec.repeated + 1)
        return
    if outcome is arithmetic.Outcome.OVER_MAX:
        batch.plan.note(
            "warning",
            "meter %s: %s W from a %s ms period is above its maximum of %s W; "
            "pulse counted, power not stored",
            no,
            arithmetic.power_w(result.period, m.pulses_per_kwh),
            result.period,
            m.max_power_w,
        )
        rec = replace(rec, over_max=rec.over_max + 1)
    elif outcome is arithmetic.Outcome.REBOOT:
        batch.plan.note(
            "warning",
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
        arithmetic.kwh(state.counts, m.pulses_per_kwh),
        state.last_millis,
        result.period,
        at_time(item.at_ms),
        pulses=rec.counted + 1,
    )
    batch.store(
        no, replace(rec, state=state, counted=rec.counted + 1), row, result.watt, item.at_ms
    )


def _typed_in_reading(batch: _Batch, item: Item) -> None:
    no = batch.meter_of(item)
    if no is None:
        return
    m = batch.meters[no]
    rec = batch.record(no)
    state, exact = arithmetic.set_reading(rec.state, int(item.value), m.pulses_per_kwh)
    if not exact:
        batch.plan.note(
            "warning",
            "meter %s: reading %s rounded to %s pulses (%s pulses/kWh)",
            no,
            item.value,
            state.counts,
            m.pulses_per_kwh,
        )
    kwh = arithmetic.kwh(state.counts, m.pulses_per_kwh)
    batch.plan.note("info", "meter %s set to %s kWh by a typed-in reading", no, kwh)
    # It sets the count, not consumption: the row carries the pulses counted unchanged.
    row = Row(
        no,
        None,
        state.counts,
        kwh,
        state.last_millis,
        -1,
        at_time(item.at_ms),
        pulses=rec.counted,
        typed_in=True,
    )
    batch.store(no, replace(rec, state=state), row, None, item.at_ms)


def _powerup(batch: _Batch, _item: Item) -> None:
    for no in batch.meters:
        if no in batch.committed:
            rec = batch.record(no)
            batch.plan.records[no] = replace(rec, state=arithmetic.powerup(rec.state))
    batch.plan.note(
        "info", "powerup: the Arduino restarted; next pulse of each meter sets its baseline"
    )


def _stop(batch: _Batch, _item: Item) -> None:
    batch.plan.stop = True


def _rejected(batch: _Batch, item: Item) -> None:
    """A key the router rejected (it keeps a copy in Redis too): the value is its preview."""
    batch.plan.dead_letters.append(
        DeadLetter(at_time(item.at_ms), item.key, item.value, item.reason)
    )


# What the processor does with each kind it is handed. Kind.PUSH goes to the pusher's list.
HANDLERS: dict[Kind, Callable[[_Batch, Item], None]] = {
    Kind.TIMESTAMP: _pulse,
    Kind.METERCOUNT: _typed_in_reading,
    Kind.POWERUP: _powerup,
    Kind.STOP: _stop,
    Kind.REJECTED: _rejected,
}


def plan_batch(
    items: list[Item],
    meters: Mapping[int, Meter],
    records: Mapping[int, MeterRecord],
    done: Mapping[str, int],
    indexes: Sequence[int],
) -> Plan:
    """What the batch does. `records` and `done` are the committed state; not modified. The
    plan ends with the first stop item: what follows it stays for the next start. New rows take
    `indexes` in order (an item makes one row at most, so one per item is enough);
    plan.indexes_used says how many they took."""
    if len(indexes) < len(items):
        # Checked here, not met in a handler: there it would make an item a dead letter.
        raise ValueError(f"{len(items)} items need {len(items)} indexes, not {len(indexes)}")
    plan = Plan(done=dict(done))
    batch = _Batch(meters, records, plan, indexes)
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
        handler = HANDLERS.get(item.kind)
        if handler is None:
            plan.reject(item, f"the processor does not handle kind {item.kind.name}")
            continue
        try:
            handler(batch, item)
        except Exception as exc:  # no item may stop the processor
            # Handlers change the plan only once they have computed everything, so a failure
            # leaves nothing of the item behind: it becomes a dead letter, the batch goes on.
            plan.reject(item, f"cannot be applied ({type(exc).__name__}: {exc})")
            continue
        if plan.stop:
            break
    plan.readings = {
        no: arithmetic.kwh(rec.state.counts, meters[no].pulses_per_kwh)
        for no, rec in plan.records.items()
    }
    return plan
