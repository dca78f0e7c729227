"""A program never outlives its supervisor (supervision.py), in every state it can be in:
waiting out an outage, blocked on Redis, or inside a batch, which it finishes first."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import psutil
import pytest

from energy_worker.adapters import postgres
from helpers import pulses, status, wait_until

pytestmark = pytest.mark.processes


class FakeSupervisor:
    """A parent process that starts one program and can be killed with -9, as supervisord
    (or a terminal under `make run`) can be."""

    def __init__(self, program: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        log.touch()
        self.parent = subprocess.Popen(
            ["sh", "-c",
             f'{sys.executable} -m energy_worker.programs.{program} 2>>"$1" & echo $!; wait',
             "sh", str(log)],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.parent.stdout is not None
        self.child = psutil.Process(int(self.parent.stdout.readline()))

    def wait_for_log(self, text: str) -> None:
        wait_until(lambda: text in self.log.read_text(), 15, what=f"{text!r} in the log")

    def die(self) -> None:
        self.parent.kill()
        self.parent.wait()

    def child_gone(self) -> bool:
        try:
            return self.child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def close(self) -> None:
        if self.parent.poll() is None:
            self.die()
        if not self.child_gone():
            self.child.kill()


@pytest.fixture
def supervise(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    made: list[FakeSupervisor] = []

    def start(program: str, **env: str) -> FakeSupervisor:
        supervisor = FakeSupervisor(
            program, {**worker_env, **env}, tmp_path / f"{program}-{len(made)}.log"
        )
        made.append(supervisor)
        return supervisor

    yield start
    for supervisor in made:
        supervisor.close()


def closed_port() -> str:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("program", ["router", "processor", "pusher"])
def test_waiting_out_an_outage(supervise, program: str):
    supervisor = supervise(program, REDIS_PORT=closed_port())
    supervisor.wait_for_log("Redis unavailable")
    supervisor.die()
    wait_until(supervisor.child_gone, 5, what=f"{program} to exit")


@pytest.mark.parametrize(
    ("program", "blocked"),
    [("router", "listening"), ("processor", "connected to PostgreSQL"), ("pusher", "totals")],
)
def test_blocked_on_redis_or_asleep(supervise, program: str, blocked: str):
    supervisor = supervise(program, LOG_LEVEL="DEBUG" if program == "pusher" else "INFO")
    supervisor.wait_for_log(blocked)
    supervisor.die()
    wait_until(supervisor.child_gone, 5, what=f"{program} to exit")


def test_inside_a_batch_it_finishes_the_batch_first(supervise, pg, sql, r):
    """The batch's commit waits on a row lock the test holds; the supervisor dies; the lock
    goes; the batch is committed and acknowledged, and then the processor exits."""
    supervisor = supervise("processor")
    supervisor.wait_for_log("connected to PostgreSQL")
    blocker = postgres.connect(pg, "energy-worker tests")
    blocker.run("BEGIN")
    blocker.run("SELECT * FROM meter_status_stored WHERE meter_no = 1 FOR UPDATE")
    pulses(r, 1, [1000, 2800])
    wait_until(
        lambda: _waiting_on_a_lock(sql), 15, what="the processor's commit to wait on the lock"
    )
    supervisor.die()
    assert not supervisor.child_gone()  # still in its batch
    blocker.run("ROLLBACK")
    blocker.close()
    wait_until(supervisor.child_gone, 10, what="the processor to exit")
    assert status(sql, 1)["meter_counts"] == 2  # the batch was finished
    assert r.llen("energy-worker:processing") == 0  # and acknowledged


def _waiting_on_a_lock(sql: pg8000.native.Connection) -> bool:
    rows = sql.run(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        "'energy-worker processor' AND wait_event_type = 'Lock' AND datname = current_database()"
    )
    return bool(rows[0][0])


def test_a_supervisor_gone_before_the_program_asked_is_noticed(worker_env, tmp_path: Path):
    """supervisord died between starting the program and the program asking to follow it:
    the program's parent is not the supervisord of the run directory's pid file."""
    (tmp_path / "supervisord.pid").write_text(f"{os.getpid() + 999_999}\n")
    env = {**worker_env, "SUPERVISOR_ENABLED": "1", "ENERGY_WORKER_RUN_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "energy_worker.programs.router"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the process that started this one is gone" in done.stderr
