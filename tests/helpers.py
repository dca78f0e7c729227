"""Test helpers: waiting on conditions (never sleeping as synchronisation) and the processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from energy_worker.adapters.config import PostgresSettings
from energy_worker.adapters.work_queue import Queues
from energy_worker.core.domain import Item

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 15.0,
    interval: float | None = None,
    what: str = "",
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds.
    Without an `interval`, polls every 10 ms at first and then every 5 % of the time waited so
    far (at most 0.1 s): a long wait on a condition that runs a query or reads a log no longer
    spins, and notices later by at most a twentieth of what it waited."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = condition()
        if result:
            return result
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval if interval is not None else min(max(0.01, (now - start) / 20), 0.1))


# A program by its name (as it logs), and the module that runs it where the two differ.
MODULES = {"setup": "set_up"}


class Proc:
    """One of our processes, started as supervisord would start it."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", f"energy_worker.programs.{MODULES.get(name, name)}"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.log(), timeout, what=f"{self.name} to log {text!r}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            self.popen.wait(10)

    def close(self) -> None:
        self.kill()
        self._log.close()


def write_ini(settings: PostgresSettings, path: Path) -> Path:
    path.write_text(
        "[postgresql]\n"
        f"host = {settings.host}\nport = {settings.port}\ndatabase = {settings.database}\n"
        f"user = {settings.user}\npassword = {settings.password}\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


# --- feeding the pipeline as the webhook and the router do ------------------------------------

T0 = 1_795_000_000_000  # a wall time in ms
METERS = frozenset(range(1, 8))  # services/energy_worker/meters.toml


def enqueue(r: Any, key: str, value: str, at_ms: int | None = None) -> None:
    """What the webhook and the router do for one key: SET it, then route it."""
    r.set(key, value)
    routed = Queues(r, METERS).route(key.encode(), at_ms=at_ms)
    assert routed.outcome == "routed", routed


def enqueue_many(r: Any, entries: list[tuple[str, str, int]]) -> None:
    """enqueue() for many keys, pipelined."""
    queues = Queues(r, METERS)
    pipe = r.pipeline(transaction=False)
    for key, value, at_ms in entries:
        pipe.set(key, value)
        queues.route_in(pipe, key.encode(), at_ms=at_ms)
    results = pipe.execute()
    assert all(result is True or result[0] == b"routed" for result in results), results[:4]


def backlog(n: int) -> list[tuple[str, str, int]]:
    """n pulses, round-robin over the 7 meters, each meter pulsing every 500 ms."""
    return [
        (f"channel:{i % 7 + 1}:timestamp", str(1000 + (i // 7) * 500), T0 + (i // 7) * 500)
        for i in range(n)
    ]


def pulses(r: Any, meter_no: int, millis: list[int], start_ms: int = T0) -> None:
    base = millis[0]
    for m in millis:
        enqueue(r, f"channel:{meter_no}:timestamp", str(m), start_ms + (m - base))


STATUS_COLUMNS = [
    "meter_counts",
    "kwh",
    "pulse_time_stamp",
    "pulse_period",
    "pulses_counted",
    "pulses_repeated",
    "pulses_rejected",
    "reference_watt_consumption",
]


def status(sql: Any, meter_no: int) -> dict[str, Any]:
    (row,) = sql.run(
        f"SELECT {', '.join(STATUS_COLUMNS)} FROM meter_status WHERE meter_no = :m", m=meter_no
    )
    return dict(zip(STATUS_COLUMNS, row, strict=True))


def history(sql: Any, meter_no: int) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in sql.run(
            "SELECT watt_consumption, meter_counts, kWh, pulse_period FROM consumption "
            "WHERE meter_no = :m ORDER BY index",
            m=meter_no,
        )
    ]


def item_json(item: Item) -> bytes:
    """A work item as the router's Lua script writes it (adapters/lua/route_lib.lua, route()):
    for tests that put an item on a list themselves."""
    data: dict[str, Any] = {"e": item.epoch, "s": item.seq, "k": item.kind.value, "v": item.value}
    data |= {"at": item.at_ms, "key": item.key}
    if item.meter is not None:
        data["m"] = item.meter
    if item.reason:
        data["reason"] = item.reason
    return json.dumps(data).encode()
