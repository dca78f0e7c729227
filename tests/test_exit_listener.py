"""The exit listener (services/energy_worker/runtime/exit_listener.py): its restart policy, and
what it
does with each exit, with supervisord's side replaced. tests/test_supervised.py and
tests/test_restarts.py run it inside a real supervisord."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
from supervisor.states import SupervisorStates
from supervisor.supervisord import Supervisor

from energy_worker.runtime import exit_listener
from energy_worker.runtime.exit_listener import ExitListener, RestartPolicy


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


class FakeRestarter:
    def __init__(self) -> None:
        self.crashes: list[tuple[str, float | None]] = []

    def crashed(self, name: str, uptime: float | None) -> None:
        self.crashes.append((name, uptime))


def exit_event(name: str, expected: bool, start: float = 100.0, stop: float = 130.0) -> Any:
    process = SimpleNamespace(
        config=SimpleNamespace(name=name),
        laststart=start,
        laststop=stop,
        exitstatus=0 if expected else 143,
    )
    return SimpleNamespace(process=process, expected=True)  # 0 and 143 are both expected


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ExitListener:
    monkeypatch.setenv("ENERGY_WORKER_RUN_DIR", str(tmp_path))
    supervisord = SimpleNamespace(options=SimpleNamespace(mood=SupervisorStates.RUNNING))
    return ExitListener(supervisord, logging.getLogger("test"), FakeRestarter())  # type: ignore[arg-type]


def test_a_crash_is_restarted_with_the_uptime_it_had(listener: ExitListener):
    listener.exited(exit_event("router", expected=False, start=100.0, stop=130.5))
    listener.exited(exit_event("pusher", expected=False, start=0, stop=0))  # never started
    assert listener.restarter.crashes == [("router", 30.5), ("pusher", None)]  # type: ignore[attr-defined]


def test_the_processors_stop_marks_the_stop_then_shuts_supervisord_down(
    listener: ExitListener, tmp_path: Path
):
    listener.exited(exit_event("router", expected=True))  # the router's stop: not the end yet
    assert not (tmp_path / "stop-requested").exists()
    assert listener.supervisord.options.mood == SupervisorStates.RUNNING
    listener.exited(exit_event("processor", expected=True))
    assert (tmp_path / "stop-requested").exists()  # for entrypoint.sh, before the shutdown
    # What supervisord's own shutdown RPC (`supervisorctl shutdown`) does to a running one...
    twin = SimpleNamespace(options=SimpleNamespace(mood=SupervisorStates.RUNNING))
    assert SupervisorNamespaceRPCInterface(twin).shutdown() is True
    assert listener.supervisord.options.mood == twin.options.mood
    # ... and what its main loop takes for "stop every process and exit", not a restart
    assert supervisord_ends_its_loop(listener.supervisord.options.mood)
    assert listener.restarter.crashes == []  # type: ignore[attr-defined]


def supervisord_ends_its_loop(mood: int) -> bool:
    """One turn of supervisord's real main loop at this mood, with no process to stop: True when
    it leaves the loop (ExitNow) and its main() then exits rather than starting again."""
    from supervisor.medusa import asyncore_25 as asyncore  # noqa: PLC0415

    def poll(_timeout: float) -> None:
        raise LookupError("polled: supervisord goes on running")

    options = SimpleNamespace(mood=mood, get_socket_map=dict, poller=SimpleNamespace(poll=poll))
    try:
        Supervisor(options).runforever()
    except asyncore.ExitNow:
        return mood < SupervisorStates.RESTARTING  # supervisord.main(): exit, or start again
    except LookupError:
        return False
    return False


def test_nothing_it_does_can_take_supervisord_down(listener: ExitListener, caplog):
    listener.exited(SimpleNamespace(process=None, expected=False))  # a malformed event
    assert "could not act on SimpleNamespace" in caplog.text


def test_supervisord_loads_it_as_a_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from supervisor import events  # noqa: PLC0415

    subscribed: list[Any] = []
    monkeypatch.setattr(events, "subscribe", lambda kind, callback: subscribed.append(kind))
    plugin = exit_listener.make_rpcinterface(SimpleNamespace())
    assert isinstance(plugin, ExitListener)
    assert subscribed == [
        events.ProcessStateExitedEvent,
        events.ProcessStateFatalEvent,
        events.ProcessStateRunningEvent,
    ]
