"""The ledger (services/energy_worker/core/ledger.py) alone: what a batch of work items does to the
meters, without Redis or PostgreSQL. The arithmetic itself is tests/test_arithmetic.py's; the rows
in the tables are tests/test_processor.py's."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import pytest

from energy_worker.core import ledger
from energy_worker.core.domain import Item, Meter, MeterRecord, MeterState, Run
from energy_worker.core.keys import Kind

T0 = 1_700_000_000_000  # ms since 1970
METERS = {n: Meter(n, f"m{n}", 1000, 17250, Decimal(5)) for n in (1, 2)}
FRESH = {n: MeterRecord(MeterState(), None) for n in METERS}  # configured, never pulsed


def item(seq: int, kind: Kind, meter: int | None = 1, value: str = "", epoch: str = "e1") -> Item:
    key = {
        Kind.TIMESTAMP: f"channel:{meter}:timestamp",
        Kind.METERCOUNT: f"channel:{meter}:metercount",
    }
    return Item(epoch, seq, kind, meter, value, T0 + 1000 * seq, key.get(kind, kind.name.lower()))


def pulse(seq: int, millis: int, meter: int = 1) -> Item:
    return item(seq, Kind.TIMESTAMP, meter, str(millis))


def plan_of(
    items: list[Item],
    meters: Mapping[int, Meter],
    records: Mapping[int, MeterRecord],
    done: Mapping[str, int],
) -> ledger.Plan:
    """ledger.plan_batch with enough row indexes, as the processor reserves them."""
    return ledger.plan_batch(items, meters, records, done, range(101, 101 + len(items)))


def test_pulses_count_and_give_the_power_of_their_period():
    plan = plan_of([pulse(1, 1000), pulse(2, 2800), pulse(3, 4600)], METERS, FRESH, {})
    rec = plan.records[1]
    assert (rec.state.counts, rec.counted) == (3, 3)
    watts = sorted(
        (row.watt for row in [*plan.new_rows.values(), *plan.moved_rows.values()]),
        key=lambda w: -1 if w is None else w,
    )
    assert watts[0] is None  # the first pulse has no predecessor: counted, no power
    assert set(watts[1:]) == {2000}  # 3,600,000,000 / (1800 ms x 1000 pulses/kWh)
    assert plan.readings == {1: Decimal("0.003")}
    assert (plan.done, plan.last, plan.consumed) == ({"e1": 3}, ("e1", 3), 3)


def test_the_committed_state_it_is_given_is_not_changed():
    records = {1: MeterRecord(MeterState(counts=500, last_millis=1000), None, counted=500)}
    done = {"e1": 0}
    plan = plan_of([pulse(1, 2800)], METERS, records, done)
    assert plan.records[1].state.counts == 501
    assert records[1].state.counts == 500 and done == {"e1": 0}


def test_items_committed_before_are_skipped_by_epoch_and_sequence():
    items = [pulse(4, 1000), pulse(5, 2800), item(2, Kind.TIMESTAMP, 1, "4600", epoch="e2")]
    plan = plan_of(items, METERS, FRESH, {"e1": 4, "e2": 7})
    assert plan.skipped == 2 and plan.records[1].state.counts == 1
    assert plan.done == {"e1": 5, "e2": 7}


def test_a_typed_in_reading_sets_the_count_but_counts_no_pulse():
    plan = plan_of([pulse(1, 1000), item(2, Kind.METERCOUNT, 1, "27997")], METERS, FRESH, {})
    rec = plan.records[1]
    assert plan.readings == {1: Decimal("279.970")}
    assert rec.counted == 1  # the pulse only
    typed = [r for r in [*plan.new_rows.values(), *plan.moved_rows.values()] if r.typed_in]
    assert len(typed) == 1 and typed[0].pulses == 1 and typed[0].watt is None


def test_the_plan_ends_with_a_stop_and_leaves_what_follows():
    items = [pulse(1, 1000), item(2, Kind.STOP, None), pulse(3, 2800)]
    plan = plan_of(items, METERS, FRESH, {})
    assert plan.stop and plan.consumed == 2 and plan.last == ("e1", 2)
    assert plan.records[1].state.counts == 1


def test_a_stop_committed_before_still_stops():
    items = [item(2, Kind.STOP, None), pulse(3, 2800)]
    plan = plan_of(items, METERS, FRESH, {"e1": 2})
    assert plan.stop and plan.consumed == 1 and plan.skipped == 1 and not plan.records


def test_an_item_it_cannot_apply_is_a_dead_letter_and_the_batch_goes_on(
    monkeypatch: pytest.MonkeyPatch,
):
    def fails(_batch: object, _item: Item) -> None:
        raise ArithmeticError("a handler's bug")

    monkeypatch.setitem(ledger.HANDLERS, Kind.POWERUP, fails)
    items = [pulse(1, 1000), item(2, Kind.POWERUP, None, "true"), pulse(3, 2800)]
    plan = plan_of(items, METERS, FRESH, {})
    assert [(i.seq, reason) for i, reason in plan.unusable] == [
        (2, "cannot be applied (ArithmeticError: a handler's bug)")
    ]
    assert [d.key for d in plan.dead_letters] == ["powerup"]
    assert plan.records[1].state.counts == 2  # both pulses, the second with its power
    assert {row.watt for row in plan.new_rows.values()} | {
        row.watt for row in plan.moved_rows.values()
    } == {None, 2000}
    assert plan.done == {"e1": 3}  # the dead letter is committed with the batch


def test_a_value_or_meter_the_contract_refuses_is_a_dead_letter_with_its_reason():
    items = [item(1, Kind.TIMESTAMP, 1, "12a"), pulse(2, 1000, meter=3), pulse(3, 1000)]
    plan = plan_of(items, METERS, FRESH, {})
    reasons = [reason for _, reason in plan.unusable]
    assert len(reasons) == 2 and reasons[1] == "meter 3 is not configured in PostgreSQL"
    assert list(plan.records) == [1] and plan.records[1].state.counts == 1


def test_a_kind_the_processor_does_not_handle_is_a_dead_letter_not_a_pulse():
    plan = plan_of([item(1, Kind.PUSH, None, "true")], METERS, FRESH, {})
    assert [reason for _, reason in plan.unusable] == ["the processor does not handle kind PUSH"]
    assert not plan.records and plan.done == {"e1": 1}


def test_a_key_the_router_rejected_becomes_one_dead_letter_with_its_reason():
    rejected = Item("e1", 1, Kind.REJECTED, None, "x", T0, "junk", reason="unknown key")
    plan = plan_of([rejected], METERS, FRESH, {})
    assert [(d.key, d.value, d.reason) for d in plan.dead_letters] == [("junk", "x", "unknown key")]
    assert not plan.unusable and not plan.records


def test_a_powerup_makes_the_next_pulse_a_baseline_without_power():
    records = {1: MeterRecord(MeterState(counts=10, last_millis=1000, last_at_ms=T0), None, 10)}
    plan = plan_of([item(1, Kind.POWERUP, None, "true"), pulse(2, 50)], METERS, records, {})
    rows = [*plan.new_rows.values(), *plan.moved_rows.values()]
    assert plan.records[1].state.counts == 11
    assert [row.watt for row in rows] == [None]


def test_every_kind_the_processor_is_handed_has_a_handler():
    assert set(ledger.HANDLERS) == {
        Kind.TIMESTAMP, Kind.METERCOUNT, Kind.POWERUP, Kind.STOP, Kind.REJECTED
    }  # fmt: skip


# --- row indexes and readings: the plan comes out as the transaction writes it ---------------


def test_new_rows_take_the_indexes_given_in_order_the_oldest_the_lowest():
    items = [
        pulse(1, 1000),  # meter 1: a run without power
        pulse(2, 1000, meter=2),  # meter 2: the same
        pulse(3, 2800),  # meter 1: 2000 W, a new run
        pulse(4, 4600),  # meter 1: its moving row
        pulse(5, 6400),  # meter 1: moves it
    ]
    given = [7, 9, 30, 31, 32, 33]
    plan = ledger.plan_batch(items, METERS, FRESH, {}, given)
    assert plan.indexes_used == 4
    assert list(plan.new_rows) == [7, 9, 30, 31]  # in the order the rows were made
    assert [plan.new_rows[i].at for i in (7, 30, 31)] == sorted(
        plan.new_rows[i].at for i in (7, 30, 31)
    )
    assert plan.new_rows[9].meter_no == 2
    assert plan.new_rows[31].millis == 6400  # the moving row made here holds the last pulse
    assert not plan.moved_rows  # a row this batch made is inserted, moved or not
    assert plan.records[1].run == Run(2000, 30, 31, T0 + 5000)
    assert plan.records[2].run is not None and plan.records[2].run.first_row == 9


def test_a_committed_row_is_moved_in_place_and_takes_no_index():
    committed = {
        1: MeterRecord(
            MeterState(counts=10, last_millis=1000, last_period=1800, last_at_ms=T0),
            Run(2000, 4, 5, T0),
            counted=10,
        ),
        2: FRESH[2],
    }
    plan = ledger.plan_batch([pulse(1, 2800)], METERS, committed, {}, [6])
    assert plan.indexes_used == 0 and not plan.new_rows
    assert list(plan.moved_rows) == [5] and plan.moved_rows[5].counts == 11
    assert plan.records[1].run == Run(2000, 4, 5, T0 + 1000)


def test_a_prefix_of_the_batch_takes_a_prefix_of_the_same_indexes():
    """The isolation of a refused item plans prefixes of a batch with the same indexes: each
    try numbers its rows as the full batch would have."""
    items = [pulse(1, 1000), pulse(2, 2800), pulse(3, 1000, meter=2), pulse(4, 4600)]
    whole = ledger.plan_batch(items, METERS, FRESH, {}, range(50, 60))
    for k in range(len(items)):
        part = ledger.plan_batch(items[:k], METERS, FRESH, {}, range(50, 60))
        assert list(part.new_rows) == list(whole.new_rows)[: part.indexes_used]


def test_too_few_indexes_is_the_caller_s_error_not_an_item_s():
    """Fewer indexes than items raises at once: a handler short of an index would make a
    pulse a dead letter."""
    with pytest.raises(ValueError, match="2 items need 2 indexes, not 1"):
        ledger.plan_batch([pulse(1, 1000), pulse(2, 2800)], METERS, FRESH, {}, [1])
    plan = ledger.plan_batch([item(1, Kind.POWERUP, None, "true")], METERS, FRESH, {}, [1])
    assert plan.indexes_used == 0


def test_the_plan_carries_each_touched_meter_s_reading_in_decimal():
    meters = {1: METERS[1], 2: Meter(2, "m2", 800, 17250, Decimal(5)), 3: METERS[1]}
    records = {
        1: MeterRecord(MeterState(counts=27997, last_millis=1000, last_at_ms=T0), None, 1),
        2: MeterRecord(MeterState(counts=799, last_millis=1000, last_at_ms=T0), None, 1),
        3: MeterRecord(MeterState(counts=5), None),
    }
    plan = ledger.plan_batch([pulse(1, 2800), pulse(2, 2800, meter=2)], meters, records, {}, [1, 2])
    assert plan.readings == {1: Decimal("27.998"), 2: Decimal("1.00000")}  # not meter 3
    assert all(type(kwh) is Decimal for kwh in plan.readings.values())
    # A power-up touches every meter (a new baseline): each gets its reading, unchanged.
    plan = ledger.plan_batch([item(1, Kind.POWERUP, None, "true")], meters, records, {}, [1])
    assert plan.readings == {1: Decimal("27.997"), 2: Decimal("0.99875"), 3: Decimal("0.005")}
