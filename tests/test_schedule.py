"""The pusher's schedule across both daylight-saving changes, and why the `schedule` package
alone cannot be trusted with them (pusher/schedule.py).

`schedule` reads the time with datetime.now() and keeps its instants as naive local times, so
here it reads a clock of the test's own: `schedule.datetime` is replaced by a module whose
datetime.now() gives that clock, as the system's local time in the container (TZ) or as UTC.
"""

from __future__ import annotations

import datetime as real
import os
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import schedule

from energy_worker.programs.pusher.settings import PushSettings
from energy_worker.programs.pusher.timetable import Schedule

CPH = ZoneInfo("Europe/Copenhagen")
AUTUMN_EVE = datetime(2024, 10, 26, 21, 0, 30, tzinfo=UTC)  # 23:00:30 CEST, the 26th
SPRING_EVE = datetime(2024, 3, 30, 22, 0, 30, tzinfo=UTC)  # 23:00:30 CET, the 30th
STEP = timedelta(seconds=20)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime, ZoneInfo], Clock]:
    """A clock that `schedule` reads as the system's time in `local`."""

    def make(start: datetime, local: ZoneInfo) -> Clock:
        clock = Clock(start)

        class Now(real.datetime):
            @classmethod
            def now(cls, tz: real.tzinfo | None = None) -> Now:
                moment = clock.now.astimezone(tz or local)
                return moment if tz else moment.replace(tzinfo=None)  # type: ignore[return-value]

        shim = types.SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if n[0] != "_"})
        shim.datetime = Now
        monkeypatch.setattr(schedule, "datetime", shim)
        return clock

    return make


def run_for(clock: Clock, hours: int, step: Callable[[], None]) -> None:
    end = clock.now + timedelta(hours=hours)
    while clock.now < end:
        step()
        clock.now += STEP


def shown(instants: list[datetime]) -> list[str]:
    return [t.astimezone(CPH).strftime("%d %H:%M%z") for t in instants]


# --- the pusher's schedule: right on both changes ------------------------------------------


@pytest.mark.parametrize(
    ("eve", "hours_that_day", "push_at"),
    [
        (AUTUMN_EVE, 25, ["27 00:02+0200", "28 00:02+0100"]),
        (SPRING_EVE, 23, ["31 00:02+0100", "01 00:02+0200"]),
    ],
)
def test_the_pushers_jobs_are_due_after_every_local_hour_and_once_a_day(
    clock, eve: datetime, hours_that_day: int, push_at: list[str]
):
    """Totals are due once after each hour has ended (25 on the autumn day, 23 in spring, the
    repeated hour too), and the daily push check at 00:02 local time each day. The system's
    local time is TZ, as in the container."""
    now = clock(eve, CPH)
    plan = Schedule(PushSettings(sheet_url=None, tz=CPH), now)
    totals_at: list[datetime] = []
    pushes_at: list[datetime] = []

    def step() -> None:
        plan.run_pending()
        if plan.totals_due:
            totals_at.append(now.now)
            plan.totals_done()
        if plan.pushes_due:
            pushes_at.append(now.now)
            day = now.now.astimezone(CPH).date() + timedelta(days=1)
            plan.pushes_checked(datetime(day.year, day.month, day.day, 0, 2, tzinfo=CPH))

    run_for(now, 26 + hours_that_day, step)
    start_of_day = datetime.combine(eve.astimezone(CPH).date() + timedelta(days=1), real.time())
    first = start_of_day.replace(tzinfo=CPH).astimezone(UTC)
    day_totals = [t for t in totals_at if first < t <= first + timedelta(hours=hours_that_day)]
    assert len(day_totals) == hours_that_day, shown(day_totals)
    # each after its hour's end plus the settling time, by less than one step
    for at in day_totals:
        past = (at - timedelta(seconds=5)).replace(minute=0, second=0, microsecond=0)
        assert timedelta(seconds=5) <= at - past < timedelta(seconds=5) + STEP, shown([at])
    assert shown(pushes_at[1:3]) == push_at  # the first: at start, as the pusher does


# --- why `schedule` alone is not enough --------------------------------------------------------


def test_schedule_on_local_time_skips_the_repeated_hour_in_autumn(clock):
    """Without a time zone `schedule` counts in naive local time, where 02:00-03:00 comes
    twice on the autumn day: its hourly job runs once for the two hours. (pusher/schedule.py
    therefore keeps its own instants in UTC, computed by totals.py, and the package's jobs
    only raise the same flags a second time.)"""
    now = clock(AUTUMN_EVE, CPH)
    runs: list[datetime] = []
    jobs = schedule.Scheduler()
    jobs.every().hour.at("00:05").do(lambda: runs.append(now.now))
    run_for(now, 7, jobs.run_pending)
    assert shown(runs) == [
        "27 00:00+0200",
        "27 01:00+0200",
        "27 02:00+0200",
        "27 03:00+0100",  # no run at 02:00+0100: the repeated hour has no job
        "27 04:00+0100",
        "27 05:00+0100",
    ]


@pytest.fixture
def utc_system() -> Iterator[None]:
    """The process's local time is UTC (`schedule` converts its instants with astimezone())."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_schedule_with_a_time_zone_runs_a_daily_job_twice_after_the_spring_change(
    clock, utc_system
):
    """With a time zone (`at(..., tz)`, through pytz) `schedule` gets the day of the change
    right, but the day after it runs the daily job at 01:30, an hour early, and again at
    02:30."""
    pytest.importorskip("pytz")
    now = clock(SPRING_EVE, ZoneInfo("UTC"))
    runs: list[datetime] = []
    jobs = schedule.Scheduler()
    jobs.every().day.at("02:30", "Europe/Copenhagen").do(lambda: runs.append(now.now))
    run_for(now, 40, jobs.run_pending)
    assert shown(runs) == ["31 03:30+0200", "01 01:30+0200", "01 02:30+0200"]
