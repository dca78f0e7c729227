"""The rules `energy-worker status` judges the service by (pure: numbers in, findings out). Its
help text (cli/parser.py, STATUS_EPILOG) says the same in words; keep the two together."""

from __future__ import annotations

from collections.abc import Mapping

from energy_worker.core.arithmetic import WATT_MS_PER_KWH, power_bound_w

BACKLOG_WAIT_S = 60.0  # the oldest waiting pulse; the processor commits thousands a second
SILENCE_MIN_S = 3600.0  # a meter may be quiet this long whatever its last power (the default
# of METER_SILENT_AFTER, which the set-up writes where status and Grafana read it)
SILENCE_FACTOR = 100  # ... and for 100 times the period its last power implies
DEADLETTER_RECENT_S = 3600.0  # rejected input this recent needs a look
PUSH_FAILING_S = 86_400.0  # a push failing for a day: the sheet misses days
NOT_COMMITTING_INTERVALS = 3  # commit intervals without a commit while work waits
NOT_COMMITTING_MIN_S = 5.0  # ... and at least this (durable_after alone is 2 s)


def power_at_most(
    last_watt: int | None, max_power_w: int, pulses_per_kwh: int, quiet_ms: int
) -> int | None:
    """The most the meter can draw now, quiet_ms after its last pulse (meter.power_bound_w),
    when that says more than its last power (its maximum when that pulse carried none); None
    while the last power may still hold."""
    bound = power_bound_w(max(quiet_ms, 1), pulses_per_kwh)
    last = max_power_w if last_watt is None else last_watt
    return bound if bound < last else None


def implied_period_ms(watt: int, pulses_per_kwh: int) -> float:
    """The time between pulses at this power."""
    return WATT_MS_PER_KWH / (watt * pulses_per_kwh)


def meter_silent(
    last_watt: int | None, pulses_per_kwh: int, quiet_s: float, after_s: float = SILENCE_MIN_S
) -> bool:
    """Silent for at least after_s and 100 times what its last power implies (a power of 0 or
    none implies nothing: the first pulse after a powerup carries no power). The same rule as
    the view meter_silence (Grafana)."""
    if not last_watt or last_watt <= 0:
        return False
    implied_s = implied_period_ms(last_watt, pulses_per_kwh) / 1000
    return quiet_s >= max(after_s, SILENCE_FACTOR * implied_s)


def backlog_stuck(oldest_wait_s: float | None) -> bool:
    return oldest_wait_s is not None and oldest_wait_s > BACKLOG_WAIT_S


def not_committing(
    backlog: int, commit_age_s: float | None, oldest_wait_s: float | None, interval_s: float
) -> bool:
    """Work waits, and has waited, while the processor's last commit (worker_progress) is older
    than three commit intervals (at least NOT_COMMITTING_MIN_S: a commit waits for Redis's disk
    too). An unknown wait (an unreadable item at the head) counts as waiting."""
    limit = max(NOT_COMMITTING_INTERVALS * interval_s, NOT_COMMITTING_MIN_S)
    if backlog <= 0 or (commit_age_s is not None and commit_age_s <= limit):
        return False
    return oldest_wait_s is None or oldest_wait_s > limit


def push_failing(failing_for_s: float | None) -> bool:
    return failing_for_s is not None and failing_for_s > PUSH_FAILING_S


UP = ("RUNNING", "STARTING")  # STARTING: just started (the exit listener, for its first second)


def not_running(states: Mapping[str, str]) -> list[tuple[str, str]]:
    """The programs supervisord has neither RUNNING nor STARTING, with their states."""
    return [(name, state) for name, state in sorted(states.items()) if state not in UP]
