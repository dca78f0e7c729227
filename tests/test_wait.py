"""The wait for the servers at start (wait.py), on a clock of the test's own: progress every few
seconds, the limit, and a server that answers after a while."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from energy_worker.adapters import config
from energy_worker.programs import wait
from energy_worker.runtime import program
from helpers import write_ini


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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once it is closed


def test_a_port_of_this_machine_that_refuses_for_30_s_ends_the_wait_in_one_line():
    clock = Clock()
    pg = config.PostgresSettings("127.0.0.1", closed_port(), "energy", "energy", "x")
    rs = config.RedisSettings("localhost", closed_port(), 0)
    for check, setting in (
        (lambda: wait.check_postgres(pg), "POSTGRES_PORT"),
        (lambda: wait.check_redis(rs), "REDIS_PORT"),
    ):
        clock.now = 0.0
        with pytest.raises(wait.Fatal) as gave_up:
            wait.wait_for(
                "x", check, 600, logging.getLogger("wait-test"), clock, clock.sleep,
                refused_limit=wait.REFUSED_LIMIT, port_setting=setting,
            )  # fmt: skip
        assert wait.REFUSED_LIMIT <= clock.now <= wait.REFUSED_LIMIT + wait.ATTEMPT_EVERY
        assert "refused for 30 s: nothing listens" in str(gave_up.value)
        assert f"is {setting} right" in str(gave_up.value)
        assert "\n" not in str(gave_up.value)
    assert wait.is_local("127.0.0.1") and wait.is_local("localhost")
    assert not wait.is_local("192.0.2.1")  # a database on another machine may start slowly


def test_a_server_that_starts_listening_late_breaks_the_run_of_refusals():
    clock = Clock()

    def starting() -> None:  # refused for 20 s, then "starting up" for 20 s, then up
        if clock.now < 20:
            raise ConnectionRefusedError(111, "Connection refused")
        if clock.now < 40:
            raise OSError("the database system is starting up")

    assert wait.wait_for(
        "x", starting, 600, logging.getLogger("wait-test"), clock, clock.sleep, refused_limit=30
    )


def test_the_wait_at_start_gives_up_on_a_port_of_this_machine_that_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    pg = config.PostgresSettings("127.0.0.1", closed_port(), "energy", "energy", "x")
    monkeypatch.setenv("POSTGRES_INI", str(write_ini(pg, tmp_path / "postgres.ini")))
    monkeypatch.setattr(wait, "REFUSED_LIMIT", 1.0)  # 30 s in the service
    assert wait.main(program.Termination()) == program.EXIT_CONFIG
    assert (
        "PostgreSQL at energy@127.0.0.1" in caplog.text and "is POSTGRES_PORT right" in caplog.text
    )


def test_a_database_number_the_redis_server_has_not_fails_at_once_with_one_line(
    worker_env: dict[str, str],
):
    env = {**worker_env, "REDIS_DB": "100000", "REDIS_WAIT_SECONDS": "600"}
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.programs.wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "DB index is out of range" in errors[0], done.stderr
