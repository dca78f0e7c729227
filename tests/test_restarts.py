"""Restarts under supervisord (the exit listener, services/energy_worker/runtime/exit_listener.py):
what a
crash costs. A program that had run healthily is back within about a second; only a crash loop
backs off, and the router, whose downtime the Arduinos' buffers must bridge, never for long."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from stack import Stack

from cli_support import Result, cli
from energy_worker.adapters import config
from helpers import REPO, wait_until

pytestmark = pytest.mark.processes


def test_crash_looping_program_is_retried_with_growing_delay(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
):
    # A meter config the programs refuse (exit 2) while the entrypoint's set-up accepted the
    # one it saw: the programs crash at start, supervisord stays up and keeps trying.
    good = (REPO / "services" / "energy_worker" / "meters.toml").read_text()
    meters = tmp_path / "meters.toml"
    meters.write_text(good)
    s = Stack(pg, redis_db, tmp_path)
    s.env["METERS_CONFIG"] = str(meters)
    try:
        s.start()
        meters.write_text("this is not toml [")
        os.kill(s.pid("router"), signal.SIGKILL)
        wait_until(
            lambda: "router is down; starting it again in 2.0 s" in s.log(), 30, 0.1, "backoff"
        )
        assert s.ctl("status").returncode != 0  # the HEALTHCHECK fails meanwhile
        meters.write_text(good)
        wait_until(s.all_running, 30, 0.1, "router back after the config is mended")
    finally:
        s.close()


KILLS = 5


def test_a_router_killed_now_and_then_is_back_within_a_second_and_no_pulse_is_lost(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
):
    """Kill -9 of the router five times under load, far apart from the exit listener's point of
    view: each time it had run healthily, so it is back after about a second, and the
    Arduinos' 5-slot buffers bridge that. Time is scaled: a run counts as healthy after 1 s
    here (RESTART_STABLE_AFTER; 10 s in service), kills come 1.5 s apart (20 s in the field).
    Five: were they taken for a crash loop, the delay would double from the second kill on
    (0.5, 1, 2, 4 s) and the third would break the bound already."""
    s = Stack(pg, redis_db, tmp_path)
    s.env["RESTART_STABLE_AFTER"] = "1"
    names = ("PATH", "POSTGRES_INI", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "METERS_CONFIG")
    try:
        s.start()
        # RUNNING is supervisord's word at the spawn: the load starts once the router listens
        wait_until(lambda: "listening to keyspace notifications" in s.log(), 30, 0.02)
        env = {name: s.env[name] for name in names}
        env["ENERGY_WORKER_RUN_DIR"] = str(s.run_dir)
        meters = ",".join(str(n) for n in range(1, 8))
        result: list[Result] = []
        load = threading.Thread(
            target=lambda: result.append(
                cli(env, "simulate", "--meters", meters, "--power", "7200", "--duration", "9")
            )
        )  # 7 meters x 2 pulses/s (500 ms apart at 1000 pulses/kWh)
        load.start()
        downtimes = []
        for _ in range(KILLS):
            time.sleep(1.5)  # the load's pace: not a synchronisation
            pid = s.pid("router")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def back(old: int = pid) -> bool:
                router = s.info()["router"]
                return router["pid"] not in (0, old) and router["statename"] == "RUNNING"

            wait_until(back, 10, 0.02)
            downtimes.append(time.monotonic() - killed)
        load.join(60)
        (report,) = result
        assert max(downtimes) < 1.5, downtimes  # 0.5 s delay, and the start itself
        assert report.code == 0 and "lost" not in report.out.split("pulses delivered")[-1], (
            report.out + report.err
        )
        assert "All " in report.out and "pulses delivered" in report.out
        assert s.log().count("router is down; starting it again in 0.5 s") == KILLS
    finally:
        s.close()
