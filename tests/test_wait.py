"""The wait for the servers at start (wait.py), on a clock of the test's own: progress every few
seconds, the limit, and a server that answers after a while."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from energy_worker import wait


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def failing_until(clock: Clock, at: float):
    def check() -> None:
        if clock.now < at:
            raise ConnectionRefusedError(111, "Connection refused")

    return check


def test_progress_every_few_seconds_then_it_gives_up(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    log = logging.getLogger("wait-test")
    ok = wait.wait_for("PostgreSQL at x", failing_until(clock, 1e9), 12, log, clock, clock.sleep)
    assert ok is False and clock.now == pytest.approx(12)
    progress = [r.message for r in caplog.records if r.message.startswith("waiting for")]
    assert len(progress) == 2 and "Connection refused" in progress[0]
    assert "did not answer within 12 s" in caplog.text


def test_a_server_that_answers_late_is_waited_for(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    log = logging.getLogger("wait-test")
    assert wait.wait_for("Redis at x", failing_until(clock, 7.5), 600, log, clock, clock.sleep)
    assert "Redis at x answers after 8 s" in caplog.text


def test_a_configuration_waiting_cannot_mend_ends_the_wait_at_once():
    def refused() -> None:
        raise wait.Fatal("wrong password")

    with pytest.raises(wait.Fatal):
        wait.wait_for("PostgreSQL", refused, 600, logging.getLogger("wait-test"))


def test_a_database_number_the_redis_server_has_not_fails_at_once_with_one_line(
    worker_env: dict[str, str],
):
    env = {**worker_env, "REDIS_DB": "100000", "REDIS_WAIT_SECONDS": "600"}
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "DB index is out of range" in errors[0], done.stderr
