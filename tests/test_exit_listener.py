"""The exit listener (services/energy_worker/exit_listener.py): its restart policy, and the
listener on its own with supervisord's RPC replaced. tests/test_supervised.py runs it under a
real supervisord."""

from __future__ import annotations

import io
import logging
import sys
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from energy_worker import exit_listener
from energy_worker.exit_listener import RestartPolicy, uptime_of
from helpers import wait_until


def test_a_crash_after_a_healthy_run_is_restarted_within_a_second():
    policy = RestartPolicy()
    # ten kills 20 s apart: each crash finds the program up for 20 s
    assert [policy.delay("router", uptime=20.0) for _ in range(10)] == [0.5] * 10


def test_only_a_crash_loop_backs_off_and_the_router_waits_a_few_seconds_at_most():
    policy = RestartPolicy()
    delays = [policy.delay("router", uptime=1.0) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert [policy.delay("processor", uptime=1.0) for _ in range(9)][-1] == 60.0
    assert policy.delay("router", uptime=30.0) == 0.5  # healthy again: back to the start


def test_uptime_comes_from_supervisords_process_info():
    assert uptime_of({"start": 100, "stop": 130}) == 30
    assert uptime_of({"start": 100, "stop": 0}, now=lambda: 112) == 12  # stop not yet known
    assert uptime_of({}) is None


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
    """The exit listener with supervisord's side faked; what logs.setup() changes is put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setenv("ENERGY_WORKER_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(exit_listener, "RECONCILE_RETRY", 0.05, raising=False)

    def no_more_events(_stdin: Any, _stdout: Any) -> None:
        raise EndOfTest  # main() reached its event loop

    monkeypatch.setattr(exit_listener, "wait_for_event", no_more_events)
    try:
        yield exit_listener
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
def test_exit_listener_outlives_an_rpc_error_at_start(
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
    assert all(" exit_listener " in line for line in err.splitlines()), err


def test_exit_listener_marks_the_stop_before_shutting_supervisord_down(
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


def test_the_event_protocol_is_spoken_as_supervisord_expects():
    stdin = io.StringIO(
        "ver:3.0 server:supervisor serial:21 pool:exit_listener poolserial:10 "
        "eventname:PROCESS_STATE_EXITED len:74\n"
        "processname:router groupname:router from_state:RUNNING expected:0 pid:2766"
    )
    stdout = io.StringIO()
    headers, payload = exit_listener.wait_for_event(stdin, stdout)
    assert headers["eventname"] == "PROCESS_STATE_EXITED"
    assert exit_listener.parse_tokens(payload) == {
        "processname": "router",
        "groupname": "router",
        "from_state": "RUNNING",
        "expected": "0",
        "pid": "2766",
    }
    exit_listener.acknowledge(stdout)
    assert stdout.getvalue() == "READY\nRESULT 2\nOK"
    with pytest.raises(EOFError):
        exit_listener.wait_for_event(io.StringIO(""), io.StringIO())
