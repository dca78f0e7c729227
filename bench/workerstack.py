"""energy-worker as the container runs it: entrypoint.sh, which applies the schema
(`python -m energy_worker.programs.set_up`) and runs supervisord with the exit listener, router,
processor and pusher. Only the documented interface is used: the environment of
docs/CONTRACT.md, entrypoint.sh, supervisord.conf (through supervisorctl), the Redis keys of
docs/CONTRACT.md and the SQL tables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from servers import REPO, wait_until

WORK = "energy-worker:work"
PROCESSING = "energy-worker:processing"
PROGRAMS = ("router", "processor", "pusher")
PROBE_KEY = "channel:1:metercount"  # a typed-in reading: no pulse, so pulse counts stay exact
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
# Variables of ours that the benchmark's own environment must not pass on to the processes.
OWN_PREFIXES = ("POSTGRES_", "REDIS_", "GOOGLE_", "GRAFANA_", "PUSH_", "EW_", "ENERGY_WORKER_",
                "FSYNC_")  # fmt: skip
OWN_NAMES = ("LOG_LEVEL", "METERS_CONFIG", "LD_PRELOAD", "PYTHONPATH")


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    name: str
    user: str = "postgres"


@dataclass
class TreeSample:
    """CPU seconds (user + system) of each process of the tree, by pid."""

    cpu: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)


class WorkerStack:
    def __init__(
        self,
        folder: Path,
        database: Database,
        redis_port: int,
        log_level: str | None = None,
    ) -> None:
        self.folder = folder
        self.database = database
        self.redis_port = redis_port
        self.run_dir = folder / "run"
        self.ini = folder / "postgres.ini"
        self.log_path = folder / "worker.log"
        venv_bin = str(Path(sys.executable).parent)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(OWN_PREFIXES) and k not in OWN_NAMES
        }
        env.update(
            PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",  # python, supervisord
            POSTGRES_HOST=database.host,
            POSTGRES_PORT=str(database.port),
            POSTGRES_USER=database.user,
            POSTGRES_PASSWORD="bench-trust-auth",  # the private server trusts 127.0.0.1
            POSTGRES_DB=database.name,
            POSTGRES_INI=str(self.ini),
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(redis_port),
            REDIS_DB="0",
            ENERGY_WORKER_RUN_DIR=str(self.run_dir),
            METERS_CONFIG=str(REPO / "services" / "energy_worker" / "meters.toml"),
            PYTHONUNBUFFERED="1",
            # a URL, so the pusher loads its HTTP client as in service (nothing listens there;
            # a push, due only at PUSH_TIME, would fail and wait)
            GOOGLE_WEBHOOK_URL="http://127.0.0.1:9/bench-sheet",
        )
        if log_level:
            env["LOG_LEVEL"] = log_level
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.r = redis.Redis(host="127.0.0.1", port=redis_port)

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start entrypoint.sh and wait until a probe key has been routed and committed."""
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [str(REPO / "entrypoint.sh")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us in order
            )
        wait_until(self.programs_running, START_TIMEOUT, "supervisord and its programs")
        self.r.set(PROBE_KEY, "0", nx=True)
        self.wait_quiet(START_TIMEOUT, "the probe key to be routed and committed")

    def programs_running(self) -> bool:
        self.check_alive()
        return set(self.programs()) >= {"supervisord", *PROGRAMS}

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            raise SystemExit(
                f"bench: energy-worker's entrypoint exited ({self.popen and self.popen.returncode})"
                f"; see {self.log_path}"
            )

    def stop(self) -> int | None:
        """SIGTERM to the entrypoint, as `docker stop` does; its status (143 expected)."""
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        tree = self.processes()
        self.popen.send_signal(signal.SIGTERM)
        try:
            status = self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # its own session, see start()
            status = self.popen.wait()
        # Programs exit with supervisord; a straggler would only be a bug of theirs.
        _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return status

    def supervisorctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c",
             str(REPO / "supervisord.conf"), *args],
            env=self.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout + done.stderr

    def stop_programs(self, *names: str) -> None:
        self.supervisorctl("stop", *names)
        wait_until(lambda: not set(names) & set(self.programs()), STOP_TIMEOUT, "programs to stop")

    def start_programs(self, *names: str) -> None:
        self.supervisorctl("start", *names)
        wait_until(lambda: set(names) <= set(self.programs()), START_TIMEOUT, "programs to start")

    # --- what it is doing -------------------------------------------------------------------

    def quiet(self) -> bool:
        """Every webhook key taken and every item committed: the work lists are empty (items
        move atomically from key to work list to processing list, and leave it only once
        committed)."""
        self.check_alive()
        pipe = self.r.pipeline(transaction=True)
        pipe.llen(WORK)
        pipe.llen(PROCESSING)
        pipe.exists(PROBE_KEY)
        return not any(pipe.execute())

    def wait_quiet(self, timeout: float, what: str = "the worker to catch up") -> None:
        wait_until(self.quiet, timeout, f"{what} (log: {self.log_path})")

    def processes(self) -> list[psutil.Process]:
        """The entrypoint and everything under it: what runs in the container."""
        if self.popen is None:
            return []
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def programs(self) -> dict[str, psutil.Process]:
        """The processes by role: entrypoint, supervisord and the programs of supervisord.conf."""
        found: dict[str, psutil.Process] = {}
        for proc in self.processes():
            try:
                name = role(proc.cmdline())
            except psutil.Error:
                continue
            if name:
                found[name] = proc
        return found

    def sample_cpu(self) -> TreeSample:
        sample = TreeSample()
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                sample.cpu[proc.pid] = times.user + times.system
                sample.names[proc.pid] = role(proc.cmdline()) or proc.name()
        return sample

    def memory(self) -> dict[str, tuple[float, float]]:
        """PSS and RSS in MiB of each process of the tree, by role."""
        result: dict[str, tuple[float, float]] = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                name = role(proc.cmdline()) or f"{proc.name()}[{proc.pid}]"
                result[name] = (info.pss / 2**20, info.rss / 2**20)
        return result

    def write_ini(self, host: str, port: int) -> None:
        """Point $POSTGRES_INI elsewhere; a program reads it when it starts."""
        db = self.database
        self.ini.write_text(
            f"[postgresql]\nhost = {host}\nport = {port}\ndatabase = {db.name}\n"
            f"user = {db.user}\npassword = bench-trust-auth\n"
        )


def role(cmdline: list[str]) -> str | None:
    text = " ".join(cmdline)
    for name in PROGRAMS:
        if f"energy_worker.programs.{name}" in text:
            return name
    if "supervisord" in text and "supervisorctl" not in text:
        return "supervisord"
    if "entrypoint.sh" in text:
        return "entrypoint"
    return None


def cpu_used(before: TreeSample, after: TreeSample) -> tuple[float, dict[str, float], list[str]]:
    """CPU seconds between two samples: total, by role, and the processes that came or went
    meanwhile (whose CPU is then only partly counted)."""
    by_role: dict[str, float] = {}
    for pid, seconds in after.cpu.items():
        used = seconds - before.cpu.get(pid, 0.0)
        name = after.names[pid]
        by_role[name] = by_role.get(name, 0.0) + used
    changed = sorted(
        {before.names[p] for p in before.cpu.keys() - after.cpu.keys()}
        | {after.names[p] for p in after.cpu.keys() - before.cpu.keys()}
    )
    return sum(by_role.values()), by_role, changed
