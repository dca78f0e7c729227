"""End to end on the host: the supervised stack started through entrypoint.sh exactly as the
container starts it (render the ini, wait, set up, run supervisord with supervisord.conf),
against this run's real PostgreSQL database and Redis keyspace. Pulses go in through the
webhook's protocol (SET only if absent) and are looked for in PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import pg8000.native
import pytest
import redis
from supervisor.xmlrpc import SupervisorTransport

from energy_worker import config, db
from helpers import REPO, wait_until

BIN = Path(sys.executable).parent
PROGRAMS = ("router", "processor", "pusher")
# Never used to log in (the test server trusts local connections), only to prove that a
# hostile password reaches no log line.
PASSWORD = "Pw%(here)s $HOME #;='\"\\ æøå"

pytestmark = pytest.mark.skipif(
    not (REPO / "services" / "energy_worker" / "pusher.py").exists(),
    reason="the pusher (issue 4) has not landed",
)


class Stack:
    """supervisord and its programs, started by entrypoint.sh in a session of its own."""

    def __init__(self, pg: config.PostgresSettings, rs: config.RedisSettings, tmp: Path) -> None:
        self.run_dir = tmp / "run"
        self.log_path = tmp / f"stack-{time.monotonic_ns()}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
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
            "METERS_CONFIG": str(REPO / "etc" / "meters.toml"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
        self.popen: subprocess.Popen[bytes] | None = None
        self._log = self.log_path.open("wb")
        self._reader: threading.Thread | None = None

    def start(self) -> Stack:
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
        return bool(info) and all(info[p]["statename"] == "RUNNING" for p in PROGRAMS)

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

    def close(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        # nothing of ours may outlive the test
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
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
    con = db.connect(pg, "energy-worker tests")
    try:
        rows = con.run("SELECT meter_no, pulses_counted, meter_counts FROM meter_status")
    finally:
        db.close_quietly(con)
    for _, pulses, counts in rows:
        assert pulses == counts  # one count per pulse: nothing counted twice
    return Counter({meter: pulses for meter, pulses, _ in rows if pulses})


def all_stored(pg: config.PostgresSettings, hook: Webhook, timeout: float = 30) -> None:
    wait_until(lambda: counted(pg) == hook.sent, timeout, 0.05, f"{dict(hook.sent)} in PostgreSQL")


@pytest.fixture
def stack(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
) -> Iterator[Stack]:
    s = Stack(pg, redis_db, tmp_path)
    try:
        yield s.start()
    finally:
        s.close()
        assert PASSWORD not in s.log(), "the password reached a log line"


def test_pulses_reach_postgres_and_every_line_names_its_process(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings, sql: pg8000.native.Connection
):
    hook = Webhook(r)
    hook.pulses(30)
    all_stored(pg, hook)
    rows = sql.run("SELECT count(*) FROM consumption WHERE meter_no IN (1, 2, 3)")
    assert rows[0][0] >= 3  # history rows, not only the meters' state
    assert stack.ctl("status").returncode == 0  # what the HEALTHCHECK runs
    # every line of the programs carries its name; supervisord's own lines carry its level
    for line in stack.log().splitlines():
        parts = line.split()
        assert len(parts) >= 3, line
        assert parts[1] in (*PROGRAMS, "stopwatch", "entrypoint", "wait", "setup") or parts[2] in (
            "INFO",
            "WARN",
            "CRIT",
            "ERRO",
        ), line


def test_supervisorctl_restart_processor_loses_nothing(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings
):
    hook = Webhook(r)
    hook.pulses(20)
    before = stack.pid("processor")
    result = stack.ctl("restart", "processor")
    assert result.returncode == 0, result.stdout + result.stderr
    hook.pulses(20)
    assert stack.pid("processor") != before
    all_stored(pg, hook)


@pytest.mark.parametrize("program", PROGRAMS)
def test_sigkill_of_a_program_loses_nothing(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings, program: str
):
    hook = Webhook(r)
    hook.pulses(15)
    victim = stack.pid(program)
    os.kill(victim, signal.SIGKILL)
    # pulses keep coming while it is down; they wait in Redis or on the list
    hook.pulses(15)
    wait_until(
        lambda: stack.info()[program]["statename"] == "RUNNING" and stack.pid(program) != victim,
        20,
        0.05,
        f"{program} to be started again",
    )
    hook.pulses(15)
    all_stored(pg, hook)
    assert f"{program} is down; starting it again" in stack.log()
    # every program back to RUNNING (supervisorctl status exits 0 only then), none crashed
    wait_until(lambda: stack.ctl("status").returncode == 0, 15, 0.1, "all programs running")
    assert "Traceback" not in stack.log(), stack.log()[-4000:]


def test_stop_key_ends_supervisord_with_zero_and_everything_stored(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings
):
    hook = Webhook(r)
    hook.pulses(60, meters=(1, 2, 3, 4, 5, 6, 7))
    started = time.monotonic()
    wait_until(lambda: r.set("stop", "true", nx=True), 10, 0.002, "stop to be accepted")
    assert stack.wait_exit(30) == 0, stack.log()
    assert time.monotonic() - started < 15, "stopping should take seconds"
    assert counted(pg) == hook.sent
    assert "processor finished the stop request" in stack.log()
    assert (stack.run_dir / "stop-requested").exists()  # what told the entrypoint to exit 0


def test_sigterm_ends_the_entrypoint_with_143_and_every_program_stopped(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
):
    # `docker stop`, or the Docker daemon stopping for a reboot: SIGTERM to the container's
    # first process. supervisord exits 0 then; the container must not, or `restart:
    # on-failure` leaves it down after the reboot. A stop marker of an earlier run is stale.
    s = Stack(pg, redis_db, tmp_path)
    s.run_dir.mkdir()
    (s.run_dir / "stop-requested").write_text("the stop key\n")
    try:
        s.start()
        hook = Webhook(r)
        hook.pulses(10)
        all_stored(pg, hook)
        pids = [s.rpc().getPID(), *(s.pid(p) for p in (*PROGRAMS, "stopwatch"))]
        assert s.popen is not None
        s.popen.send_signal(signal.SIGTERM)  # the entrypoint's process only, not its group
        assert s.wait_exit(40) == 143, s.log()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert "supervisord ended on SIGTERM without a stop key; exit 143" in s.log()
        assert "Traceback" not in s.log(), s.log()[-4000:]
    finally:
        s.close()


def test_a_restarted_stack_finds_its_data_again(
    pg: config.PostgresSettings,
    redis_db: config.RedisSettings,
    r: redis.Redis,
    tmp_path: Path,
):
    hook = Webhook(r)
    (tmp_path / "first").mkdir()
    first = Stack(pg, redis_db, tmp_path / "first")
    try:
        first.start()
        hook.pulses(10)
        all_stored(pg, hook)
    finally:
        first.close()  # SIGTERM, as `docker stop` does
    (tmp_path / "second").mkdir()
    second = Stack(pg, redis_db, tmp_path / "second")
    try:
        second.start()
        hook.pulses(10)
        all_stored(pg, hook)
    finally:
        second.close()


def test_crash_looping_program_is_retried_with_growing_delay(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
):
    # A meter config the programs refuse (exit 2) while the entrypoint's set-up accepted the
    # one it saw: the programs crash at start, supervisord stays up and keeps trying.
    good = (REPO / "etc" / "meters.toml").read_text()
    meters = tmp_path / "meters.toml"
    meters.write_text(good)
    s = Stack(pg, redis_db, tmp_path)
    s.env["METERS_CONFIG"] = str(meters)
    try:
        s.start()
        meters.write_text("this is not toml [")
        os.kill(s.pid("router"), signal.SIGKILL)
        wait_until(
            lambda: "router is down; starting it again in 4 s" in s.log(), 30, 0.1, "backoff"
        )
        assert s.ctl("status").returncode != 0  # the HEALTHCHECK fails meanwhile
        meters.write_text(good)
        wait_until(s.all_running, 30, 0.1, "router back after the config is mended")
    finally:
        s.close()


def devrun_round(var: Path, env: dict[str, str], hook: Webhook | None) -> Webhook:
    """One `make run`: wait for its programs, send pulses, find them, then Ctrl-C."""
    log_path = var / f"devrun-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "energy_worker.devrun"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running() -> bool:
        assert proc.poll() is None, log_path.read_text()
        # a fresh proxy each time: one whose request failed cannot send another
        transport = SupervisorTransport("", "", f"unix://{var}/run/supervisor.sock")
        rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport).supervisor
        try:
            states = {p["name"]: p["statename"] for p in rpc.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Fault):
            return False
        return all(states.get(p) == "RUNNING" for p in PROGRAMS)

    try:
        wait_until(running, 90, 0.1, "make run's programs RUNNING")
        ports = json.loads((var / "ports.json").read_text())
        client = redis.Redis(host="127.0.0.1", port=ports["redis"])
        hook = hook or Webhook(client)
        hook.r = client
        hook.pulses(12)
        all_stored(
            config.PostgresSettings("127.0.0.1", ports["postgres"], "energy", "postgres", ""), hook
        )
        client.close()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        # the entrypoint exits 130 after SIGINT; make run's Ctrl-C is no error for make
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert "embedded PostgreSQL stopped" in text and "embedded Redis stopped" in text
    assert "Traceback" not in text and " ERROR " not in text, text  # a calm Ctrl-C
    for port in (ports["postgres"], ports["redis"]):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return hook


def test_make_run_with_embedded_servers_stops_on_ctrl_c_and_keeps_its_data():
    # A folder the embedded PostgreSQL's own user can reach when the tests run as root
    # (pytest's tmp_path is private to its owner).
    var = Path(tempfile.mkdtemp(prefix="ew-devrun-"))
    var.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
    env.update(ENERGY_WORKER_VAR=str(var), PYTHONPATH=str(REPO / "services"))
    try:
        hook = devrun_round(var, env, None)
        devrun_round(var, env, hook)  # the second `make run` finds the first one's data
    finally:
        shutil.rmtree(var, ignore_errors=True)


# The stopwatch listener on its own, with supervisord's RPC replaced.


class FakeSupervisor:
    """supervisord's RPC interface: getAllProcessInfo fails with each of `failures` in turn."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[str] = []

    def getAllProcessInfo(self) -> list[dict[str, Any]]:
        self.calls.append("getAllProcessInfo")
        if self.failures:
            raise self.failures.pop(0)
        return [{"name": "router", "statename": "RUNNING"}]

    def shutdown(self) -> bool:
        self.calls.append("shutdown")
        return True


class EndOfTest(Exception):
    pass


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """stopwatch with supervisord's side faked; what logs.setup() changes is put back."""
    from energy_worker import stopwatch  # noqa: PLC0415

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setenv("ENERGY_WORKER_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(stopwatch, "RECONCILE_RETRY", 0.05, raising=False)

    def no_more_events(_stdin: Any, _stdout: Any) -> None:
        raise EndOfTest  # main() reached its event loop

    monkeypatch.setattr(stopwatch.childutils.listener, "wait", no_more_events)
    try:
        yield stopwatch
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    ("failure", "logged"),
    [
        (xmlrpc.client.Fault(6, "SHUTDOWN_STATE"), "supervisord is shutting down"),
        (ConnectionRefusedError(111, "Connection refused"), "could not look at the programs"),
        (xmlrpc.client.Fault(1, "UNKNOWN_METHOD"), "could not look at the programs"),
    ],
)
def test_stopwatch_outlives_an_rpc_error_at_start(
    listener: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: Exception,
    logged: str,
):
    # A SIGTERM while the listener starts (Fault 6), or any other RPC error then, must not
    # crash it: three quick crashes make it FATAL, and crashed programs stay down for good.
    fake = FakeSupervisor(failure)
    monkeypatch.setattr(listener, "rpc", lambda: SimpleNamespace(supervisor=fake))
    with pytest.raises(EndOfTest):
        listener.main(io.StringIO(), io.StringIO())
    if logged.startswith("could not"):  # tried again a little later
        wait_until(lambda: len(fake.calls) == 2, 5, 0.01, "a second look at the programs")
    err = capsys.readouterr().err
    assert logged in err and "Traceback" not in err, err
    assert all(" stopwatch " in line for line in err.splitlines()), err


def test_stopwatch_marks_the_stop_before_shutting_supervisord_down(
    listener: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    fake = FakeSupervisor()
    marker = tmp_path / "stop-requested"

    def shutdown() -> bool:
        assert marker.exists()  # written before supervisord begins to stop
        return fake.shutdown()

    monkeypatch.setattr(
        listener, "rpc", lambda: SimpleNamespace(supervisor=SimpleNamespace(shutdown=shutdown))
    )
    log = logging.getLogger("test")
    event = {"processname": "processor", "expected": "1"}
    listener.handle("PROCESS_STATE_EXITED", event, listener.Restarter(log), log)
    assert fake.calls == ["shutdown"]
    # another program's expected exit (the router after routing the stop) is no stop yet
    marker.unlink()
    event = {"processname": "router", "expected": "1"}
    listener.handle("PROCESS_STATE_EXITED", event, listener.Restarter(log), log)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_logged_with_the_process_name(where: str):
    raiser = "raise RuntimeError('boom')"
    if where == "thread":
        raiser = "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()"
    result = subprocess.run(
        [sys.executable, "-c", f"import threading\n"
         f"from energy_worker import logs\nlogs.setup('router')\n{raiser}"],
        env={**os.environ, "PYTHONPATH": str(REPO / "services")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert lines and all(" router CRITICAL " in line for line in lines), result.stderr
    assert ("RuntimeError: boom" if where == "main" else "ZeroDivisionError") in result.stderr
    assert result.returncode == (1 if where == "main" else 0)
