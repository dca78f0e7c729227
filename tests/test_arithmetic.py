"""The meter arithmetic, alone: examples from docs/DOMAIN.md and invariants for any pulses."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from energy_worker.core import arithmetic
from energy_worker.core.arithmetic import Outcome
from energy_worker.core.domain import MeterState

S0_CONSTANTS = st.sampled_from([100, 200, 400, 500, 800, 1000, 1600, 2000, 10000])
HOUR = 3_600_000


def test_power_from_period_matches_domain_example():
    assert arithmetic.power_w(1800, 1000) == 2000


def test_kwh_is_exact_decimal():
    assert arithmetic.kwh(27997, 100) == Decimal("279.97")
    assert arithmetic.kwh(1, 800) == Decimal("0.00125")
    assert arithmetic.kwh(0, 1000) == 0
    assert isinstance(arithmetic.kwh(3, 1000), Decimal)


def test_kwh_rounds_only_for_constants_that_cannot_divide_evenly():
    assert arithmetic.kwh(1, 3) == Decimal("0.333333333")


def test_period_wraps_at_2_to_the_32():
    assert arithmetic.period_ms(500, 2**32 - 500) == 1000


def test_first_pulse_counts_without_power():
    result = arithmetic.pulse(MeterState(), 1234, 0, 1000, 20000)
    assert result.outcome is Outcome.FIRST
    assert (result.state.counts, result.watt, result.period) == (1, None, -1)


def test_second_pulse_gives_power():
    first = arithmetic.pulse(MeterState(), 1000, 0, 1000, 20000).state
    second = arithmetic.pulse(first, 2800, 1800, 1000, 20000)
    assert (second.outcome, second.watt, second.period, second.state.counts) == (
        Outcome.POWER,
        2000,
        1800,
        2,
    )


def test_same_millis_twice_counts_once():
    state = arithmetic.pulse(MeterState(), 1000, 0, 1000, 20000).state
    repeat = arithmetic.pulse(state, 1000, 5, 1000, 20000)
    assert repeat.outcome is Outcome.REPEAT
    assert repeat.state == state


def test_power_above_maximum_counts_but_gives_no_reading():
    state = arithmetic.pulse(MeterState(), 1000, 0, 1000, 5000).state
    result = arithmetic.pulse(state, 1010, 10, 1000, 5000)  # 360 kW of contact bounce
    assert result.outcome is Outcome.OVER_MAX
    assert (result.watt, result.state.counts) == (None, 2)


def test_wrap_around_gives_the_true_period():
    state = arithmetic.pulse(MeterState(), 2**32 - 900, 0, 1000, 20000).state
    result = arithmetic.pulse(state, 900, 1800, 1000, 20000)
    assert (result.outcome, result.period, result.watt) == (Outcome.POWER, 1800, 2000)


def test_millis_going_back_seconds_after_the_last_pulse_is_a_reboot():
    state = arithmetic.pulse(MeterState(), 5_000_000, 0, 1000, 20000).state
    result = arithmetic.pulse(state, 3000, 4000, 1000, 20000)
    assert result.outcome is Outcome.REBOOT
    assert (result.watt, result.state.counts, result.state.last_millis) == (None, 2, 3000)
    after = arithmetic.pulse(result.state, 4800, 5800, 1000, 20000)
    assert (after.outcome, after.watt) == (Outcome.POWER, 2000)


def test_powerup_makes_the_next_pulse_a_baseline_even_with_the_same_millis():
    state = arithmetic.pulse(MeterState(), 1000, 0, 1000, 20000).state
    state = arithmetic.powerup(state)
    result = arithmetic.pulse(state, 1000, 60_000, 1000, 20000)
    assert (result.outcome, result.state.counts) == (Outcome.FIRST, 2)


def test_reading_sets_counts_exactly():
    state, exact = arithmetic.set_reading(MeterState(counts=5), 27997, 1000)
    assert (state.counts, exact) == (279970, True)
    assert arithmetic.kwh(state.counts, 1000) == Decimal("279.97")
    state, exact = arithmetic.set_reading(MeterState(), 1, 375)  # 3.75 pulses
    assert (state.counts, exact) == (4, False)


def test_quiet_meter_power_bound_falls():
    assert arithmetic.power_bound_w(HOUR, 1000) == 1
    assert arithmetic.power_bound_w(1800, 1000) == 2000


pulse_steps = st.lists(
    st.one_of(
        st.tuples(st.just("gap"), st.integers(1, 10 * HOUR)),  # a pulse after this many ms
        st.tuples(st.just("repeat"), st.just(0)),  # the last pulse delivered again
        st.tuples(st.just("powerup"), st.integers(0, 10 * HOUR)),  # reboot; first pulse at
        st.tuples(st.just("reboot"), st.integers(0, 10 * HOUR)),  # the same, unannounced
    ),
    max_size=60,
)


@given(steps=pulse_steps, ppk=S0_CONSTANTS, start=st.integers(0, 2**32 - 1))
def test_any_pulse_sequence_counts_each_distinct_pulse_exactly_once(steps, ppk, start):
    """kWh == counts / pulses_per_kWh; each new pulse counts once; repeats never; every
    power reading equals the formula for the true period, across wraps and reboots."""
    state = MeterState()
    millis, wall, expected = start, 0, 0
    state = arithmetic.pulse(state, millis, wall, ppk, 10**9).state
    expected = 1
    for action, amount in steps:
        if action == "repeat":
            result = arithmetic.pulse(state, millis, wall + 1, ppk, 10**9)
            assert result.outcome is Outcome.REPEAT
        elif action == "reboot":
            previous = millis
            millis, wall = amount, wall + 1000
            result = arithmetic.pulse(state, millis, wall, ppk, 10**9)
            period = (millis - previous) % 2**32
            if period > 1000 + arithmetic.REBOOT_SLACK_MS:  # only a reboot explains it
                assert (result.outcome, result.watt, result.period) == (Outcome.REBOOT, None, -1)
            elif period == 0:
                assert result.outcome is Outcome.REPEAT
                expected -= 1
            else:  # millis restarted above the last value: indistinguishable from a pulse
                assert (result.outcome, result.period) == (Outcome.POWER, period)
            expected += 1
        elif action == "powerup":
            state = arithmetic.powerup(state)
            millis, wall = amount, wall + amount + 1
            result = arithmetic.pulse(state, millis, wall, ppk, 10**9)
            assert result.outcome is Outcome.FIRST
            expected += 1
        else:
            millis, wall = (millis + amount) % 2**32, wall + amount
            result = arithmetic.pulse(state, millis, wall, ppk, 10**9)
            assert result.outcome is Outcome.POWER
            assert result.period == amount
            assert result.watt == arithmetic.power_w(amount, ppk)
            expected += 1
        state = result.state
        assert state.counts == expected
        assert arithmetic.kwh(state.counts, ppk) * ppk == state.counts


@given(counts=st.integers(0, 10**12), ppk=S0_CONSTANTS)
def test_kwh_times_constant_is_counts(counts, ppk):
    value = arithmetic.kwh(counts, ppk)
    assert value * ppk == counts
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int) and exponent >= -9


@given(reading=st.integers(0, 9_999_999), ppk=S0_CONSTANTS)
def test_reading_round_trips_through_counts(reading, ppk):
    state, exact = arithmetic.set_reading(MeterState(), reading, ppk)
    assert exact == (reading * ppk % 100 == 0)
    if exact:
        assert arithmetic.kwh(state.counts, ppk) == Decimal(reading) / 100


@given(period=st.integers(1, 2**32 - 1), ppk=S0_CONSTANTS)
def test_power_is_the_nearest_watt(period, ppk):
    exact = Decimal(3_600_000_000) / (period * ppk)
    assert abs(Decimal(arithmetic.power_w(period, ppk)) - exact) <= Decimal("0.5")
