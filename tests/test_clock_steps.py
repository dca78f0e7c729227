"""The wall clock of the programs stepped by hours and days, both ways, under load: every pulse
is still counted within two commit intervals, and a stop given after the steps ends the
service. A Raspberry Pi has no real-time clock: NTP steps its time, and a time set by hand is
corrected too.

The router and the processor run as processes with libfaketime preloaded (the `libfaketime`
package ships it built), reading the offset from a file at every call, so the test steps their
wall clock while they run. Their monotonic clock stays real (DONT_FAKE_MONOTONIC), as the
kernel's does when NTP steps the time. Redis syncs its append-only file every second here, so
the processor waits durable_after (2 s) before it commits, as in the container.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import RedisServer

from energy_worker.adapters import config, postgres
from helpers import Proc, wait_until

pytestmark = pytest.mark.processes

COMMIT_INTERVAL = 5.0  # the production default: the bound is two of these
# Offsets of the programs' wall clock from the real one, one after the other: steps of -2 h,
# +2 h, +3 days and -3 days.
OFFSETS = ["-2h", "+0", "+3d", "+0"]
STEP_EVERY = 2.5  # seconds of load between two steps: each offset holds half a commit interval
PULSE_EVERY = 0.05  # seconds between two pulses (over the seven meters)


def faketime_env(offset_file: Path) -> dict[str, str]:
    spec = importlib.util.find_spec("libfaketime")  # requirements-dev.txt
    assert spec is not None and spec.origin is not None
    library = Path(spec.origin).parent / "vendor" / "libfaketime" / "src"
    return {
        "LD_PRELOAD": str(library / "libfaketime.so.1"),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }


def pulses_counted(pg: config.PostgresSettings) -> int:
    con = postgres.connect(pg, "tests")
    try:
        return int(con.run("SELECT coalesce(sum(pulses_counted), 0) FROM meter_status")[0][0])
    finally:
        con.close()


def test_clock_steps_under_load_hold_no_pulse_back(
    pg: config.PostgresSettings,
    worker_env: dict[str, str],
    spawn: Callable[..., Proc],
    tmp_path: Path,
):
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec")
    client = redis.Redis(host="127.0.0.1", port=server.port)  # the webhook's side
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    extra = {
        **faketime_env(offset_file),
        "REDIS_PORT": str(server.port),
        "REDIS_DB": "0",
        "COMMIT_INTERVAL": str(COMMIT_INTERVAL),
    }
    router = spawn("router", **extra)
    processor = spawn("processor", **extra)
    sent: list[tuple[float, int]] = []  # (monotonic time, pulses sent by then)
    done = threading.Event()

    def webhook() -> None:
        millis = {meter: 1000 for meter in range(1, 8)}
        n = 0
        while not done.is_set():
            meter = n % 7 + 1
            millis[meter] += 1800  # 2000 W at 1000 pulses/kWh
            value = str(millis[meter])

            def written(key: str = f"channel:{meter}:timestamp", value: str = value) -> bool:
                return bool(client.set(key, value, nx=True))  # as the webhook: SET NX

            wait_until(written, 5, 0.002)
            n += 1
            sent.append((time.monotonic(), n))
            done.wait(PULSE_EVERY)

    load = threading.Thread(target=webhook, daemon=True)
    try:
        processor.wait_for_log("processor started", 30)
        router.wait_for_log("router started", 30)
        load.start()
        bound = 2 * COMMIT_INTERVAL
        checked = 0  # entries of `sent` whose pulses were counted in time
        deadline_of_steps = time.monotonic() + STEP_EVERY * (len(OFFSETS) + 1)
        steps = list(OFFSETS)
        next_step = time.monotonic() + STEP_EVERY
        while time.monotonic() < deadline_of_steps or checked < len(sent):
            now = time.monotonic()
            if steps and now >= next_step:
                offset_file.write_text(steps.pop(0) + "\n")
                next_step = now + STEP_EVERY
            if now >= deadline_of_steps:
                done.set()
            counted = pulses_counted(pg)
            while checked < len(sent) and sent[checked][1] <= counted:
                checked += 1
            if checked < len(sent):
                at, n = sent[checked]
                assert time.monotonic() - at <= bound, (
                    f"pulse {n} not counted {bound} s after it was written "
                    f"(counted {counted}); processor log:\n{processor.log()[-3000:]}"
                )
            time.sleep(0.2)  # the pace of the look, not a synchronisation
        assert pulses_counted(pg) == len(sent)
        # A stop given after the steps ends the service.
        client.set("stop", "true")
        assert router.wait_exit(30) == 0
        assert processor.wait_exit(30) == 0
        assert "stop: everything before it is committed" in processor.log()
    finally:
        done.set()
        load.join(10)
        client.close()
        server.stop()
