"""What the pusher has due: the totals after each local hour, and the daily push.

The `schedule` package raises an hourly and a daily job on the system's local clock (TZ in the
container). It cannot be trusted with daylight-saving changes on its own (tests/test_schedule.py
shows both): counting in naive local time, its hourly job skips the repeated hour in autumn;
given a time zone, its daily job runs twice, an hour early first, on the day after the spring
change (schedule 1.2.2). So the instants are also computed here, in UTC from TZ (totals.py),
and both only raise due flags: the work behind them is idempotent, so a flag raised twice costs
nothing, and none is missed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import schedule

from energy_worker.core import totals
from energy_worker.programs.pusher.settings import PushSettings

SETTLE = timedelta(seconds=5)  # after an hour ends, before its totals: the last pulses land


class Schedule:
    def __init__(self, settings: PushSettings, clock: Callable[[], datetime]) -> None:
        self.tz = settings.tz
        self.clock = clock
        self.totals_due = True
        self.pushes_due = True
        self.next_totals_at: datetime | None = None
        self.next_push_check: datetime | None = None
        self.scheduler = schedule.Scheduler()
        self.scheduler.every().hour.at("00:05").do(self._mark_totals_due)
        self.scheduler.every().day.at(settings.push_time.strftime("%H:%M:%S")).do(
            self._mark_pushes_due
        )

    def run_pending(self) -> None:
        """Raise the flags of whatever has become due."""
        self.scheduler.run_pending()
        now = self.clock()
        if self.next_totals_at is None or now >= self.next_totals_at:
            self.totals_due = True
        if self.next_push_check is None or now >= self.next_push_check:
            self.pushes_due = True

    def totals_done(self) -> None:
        self.totals_due = False
        self.next_totals_at = totals.next_hour_end(self.clock(), self.tz) + SETTLE

    def pushes_checked(self, look_again_at: datetime) -> None:
        self.pushes_due = False
        self.next_push_check = look_again_at

    def wake_in(self, at_most: float, *also: datetime | None) -> float:
        """Seconds until the next due instant (or one of `also`), at most at_most."""
        now = self.clock()
        waits = [at_most]
        idle = self.scheduler.idle_seconds
        if idle is not None:
            waits.append(idle)
        for instant in (self.next_totals_at, self.next_push_check, *also):
            if instant is not None:
                waits.append((instant - now).total_seconds())
        return max(0.0, min(waits))

    def _mark_totals_due(self) -> None:
        self.totals_due = True

    def _mark_pushes_due(self) -> None:
        self.pushes_due = True
