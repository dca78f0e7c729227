"""Test helpers: waiting on conditions (never sleeping as synchronisation) and the processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from energy_worker.config import PostgresSettings

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class Proc:
    """One of our processes, started as supervisord would start it."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", f"energy_worker.{name}"],
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
