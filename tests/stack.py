"""The supervised stack for the tests that need processes: started through entrypoint.sh
exactly as the container starts it (render the ini, wait, set up, run supervisord with
supervisord.conf), against the test's PostgreSQL database and Redis; and the webhook's protocol
(SET only if absent, retry while the key exists) to feed it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections import Counter
from pathlib import Path
from typing import IO, Any

import redis
from supervisor.xmlrpc import SupervisorTransport

from energy_worker.adapters import config, postgres
from helpers import REPO, wait_until

BIN = Path(sys.executable).parent
PROGRAMS = ("router", "processor", "pusher")
# Never used to log in (the test server trusts local connections), only to prove that a
# hostile password reaches no log line.
PASSWORD = "Pw%(here)s $HOME #;='\"\\ æøå"


class Stack:
    """supervisord and its programs, started by entrypoint.sh in a session of its own."""

    def __init__(self, pg: config.PostgresSettings, rs: config.RedisSettings, tmp: Path) -> None:
        self.run_dir = tmp / "run"
        self.log_path = tmp / f"stack-{time.monotonic_ns()}.log"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS", "MQTT"))
        }
        self.env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "POSTGRES_HOST": pg.host,
            "POSTGRES_PORT": str(pg.port),
            "POSTGRES_USER": pg.user,
            "POSTGRES_PASSWORD": PASSWORD,
            "POSTGRES_DB": pg.database,
            "POSTGRES_INI": str(tmp / "postgres.ini"),
            "POSTGRES_WAIT_SECONDS": "30",
            "REDIS_HOST": rs.host,
            "REDIS_PORT": str(rs.port),
            "REDIS_DB": str(rs.db),
            "ENERGY_WORKER_RUN_DIR": str(self.run_dir),
            "METERS_CONFIG": str(REPO / "services" / "energy_worker" / "meters.toml"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
            "COMMIT_INTERVAL": "0.5",  # the tests wait for commits: not the production 5 s
        }
        # and the publisher, when MQTT_HOST is set at start()
        self.programs: tuple[str, ...] = PROGRAMS
        self.popen: subprocess.Popen[bytes] | None = None
        self._log = self.log_path.open("wb")
        self._reader: threading.Thread | None = None

    def start(self) -> Stack:
        if self.env.get("MQTT_HOST"):
            self.programs = (*PROGRAMS, "publisher")
        # A pipe, as in a container: supervisord reopens /dev/stdout, which for a regular
        # file would mean a second file offset and lines written over each other.
        self.popen = subprocess.Popen(
            [str(REPO / "entrypoint.sh")],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._copy, args=(self.popen.stdout,), daemon=True)
        self._reader.start()
        wait_until(self.all_running, 60, 0.1, "every program RUNNING")
        return self

    def _copy(self, pipe: IO[bytes]) -> None:
        for line in pipe:
            self._log.write(line)
            self._log.flush()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rpc(self) -> Any:
        transport = SupervisorTransport("", "", f"unix://{self.run_dir}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport).supervisor

    def info(self) -> dict[str, dict[str, Any]]:
        try:
            return {p["name"]: p for p in self.rpc().getAllProcessInfo()}
        except (OSError, xmlrpc.client.Fault):
            return {}

    def all_running(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"stack exited {self.popen.returncode}:\n{self.log()}")
        info = self.info()
        return bool(info) and all(
            p in info and info[p]["statename"] == "RUNNING" for p in self.programs
        )

    def pid(self, program: str) -> int:
        return self.info()[program]["pid"]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(REPO / "supervisord.conf"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def wait_exit(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def close(self, sig: int = signal.SIGKILL) -> None:
        """End the stack: by default at once (the graceful SIGTERM is a test of its own). The
        programs, in process groups of their own, follow supervisord (PR_SET_PDEATHSIG)."""
        programs = []
        with contextlib.suppress(Exception):
            programs = [info["pid"] for info in self.info().values() if info["pid"]]
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        # nothing of ours may outlive the test
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        try:
            wait_until(lambda: not [pid for pid in programs if alive(pid)], 15)
        except AssertionError:
            left = [
                (pid, cmdline(pid), Path(f"/proc/{pid}/status").read_text()[:400])
                for pid in programs
                if alive(pid)
            ]
            raise AssertionError(f"programs left: {left}") from None
        if self._reader is not None:
            self._reader.join(10)
        self._log.close()


class Webhook:
    """Sends pulses the way the webhook does: a key is written only when it is absent."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.millis: dict[int, int] = {}
        self.sent: Counter[int] = Counter()

    def pulse(self, meter: int, timeout: float = 20) -> None:
        # 1000 ms apart: 3600 W at 1000 pulses/kWh, a plausible reading.
        millis = self.millis.get(meter, 10_000) + 1000
        key = f"channel:{meter}:timestamp"
        wait_until(lambda: self.r.set(key, millis, nx=True), timeout, 0.002, f"{key} to clear")
        self.millis[meter] = millis
        self.sent[meter] += 1

    def pulses(self, count: int, meters: tuple[int, ...] = (1, 2, 3)) -> None:
        for i in range(count):
            self.pulse(meters[i % len(meters)])


def counted(pg: config.PostgresSettings) -> Counter[int]:
    con = postgres.connect(pg, "energy-worker tests")
    try:
        rows = con.run("SELECT meter_no, pulses_counted, meter_counts FROM meter_status")
    finally:
        postgres.close_quietly(con)
    for _, pulses, counts in rows:
        assert pulses == counts  # one count per pulse: nothing counted twice
    return Counter({meter: pulses for meter, pulses, _ in rows if pulses})


def all_stored(pg: config.PostgresSettings, hook: Webhook, timeout: float = 30) -> None:
    wait_until(lambda: counted(pg) == hook.sent, timeout, 0.05, f"{dict(hook.sent)} in PostgreSQL")


def alive(pid: int) -> bool:
    """A process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
