"""Acts on each program's exit, inside supervisord: it starts a crashed program again, with a
delay that grows only in a crash loop, and ends supervisord once the processor has finished a
`stop` (the stop protocol, docs/CONTRACT.md).

supervisord loads it at start as a plugin ([rpcinterface:exit_listener] in supervisord.conf,
make_rpcinterface) and hands it every EXITED, FATAL and RUNNING state change of a program. Once
every program is RUNNING it logs one line, `ready: router, processor, pusher running`. Inside
supervisord rather than as an event listener program: on a Raspberry Pi a Python process of its
own would cost ten megabytes for a few lines of logic. It never blocks supervisord: a restart is
asked for later, from a timer thread, through supervisord's own XML-RPC socket.

Why not supervisord's own autorestart: supervisord only backs off a program that dies within
`startsecs`, and it treats even an exit 0 inside that window as a failed start and restarts the
program. A processor that finds a stop marker right after starting would then be started again
instead of ending the service. So the programs run with `startsecs=0` and `autorestart=false`,
and this decides:

- processor exited 0 (expected): everything before the stop marker is committed, so supervisord
  shuts down, after the stop marker file is written (entrypoint.sh reads it);
- any other expected exit (the router after routing the stop): it stays down;
- a crash (an exit status other than 0, a signal) or FATAL: started again after RestartPolicy's
  delay.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import xmlrpc.client
from pathlib import Path
from typing import Any

# supervisor's own pieces: this runs inside supervisord, which has loaded them already
from supervisor import childutils
from supervisor.states import SupervisorStates
from supervisor.xmlrpc import Faults

FINISHER = "processor"  # its expected exit means: the stop is complete
STOP_MARKER = "stop-requested"  # in $ENERGY_WORKER_RUN_DIR; entrypoint.sh looks for it


class RestartPolicy:
    """How long to wait before starting a crashed program again.

    A program that had been up for `stable_after` seconds is started again after `first`
    seconds: a crash now and then costs about a second. Only a crash loop (a crash within
    `stable_after` of every start) doubles the delay, up to the program's cap; the router's cap
    is a few seconds, because while it is down no key is cleared and the Arduinos' buffers
    overflow, which loses pulses for good.
    """

    def __init__(
        self,
        first: float = 0.5,
        stable_after: float = 10.0,
        caps: dict[str, float] | None = None,
        default_cap: float = 60.0,
    ) -> None:
        self.first = first
        self.stable_after = stable_after
        self.caps = {"router": 4.0} if caps is None else caps
        self.default_cap = default_cap
        self.previous: dict[str, float] = {}  # the last delay of a program in a crash loop

    def delay(self, name: str, uptime: float | None) -> float:
        """The delay before starting `name` again after it crashed having been up `uptime`
        seconds (None: unknown, taken as a crash loop)."""
        if (uptime is not None and uptime >= self.stable_after) or name not in self.previous:
            delay = self.first
        else:
            delay = min(self.previous[name] * 2, self.caps.get(name, self.default_cap))
        self.previous[name] = delay
        return delay


def rpc() -> Any:
    """A fresh XML-RPC proxy to supervisord over its unix socket (supervisord.conf's
    [unix_http_server]), through supervisor's own transport; proxies are not shared between
    threads. supervisord sets SUPERVISOR_SERVER_URL for its children, not for itself."""
    run_dir = os.environ.get("ENERGY_WORKER_RUN_DIR", "")
    url = os.environ.get("SUPERVISOR_SERVER_URL") or f"unix://{run_dir}/supervisor.sock"
    return childutils.getRPCInterface({**os.environ, "SUPERVISOR_SERVER_URL": url})


class Restarter:
    """Starts crashed programs again, each after RestartPolicy's delay."""

    def __init__(self, log: logging.Logger, policy: RestartPolicy | None = None) -> None:
        self.log = log
        self.policy = policy or RestartPolicy()
        self.timers: dict[str, threading.Timer] = {}
        self.lock = threading.Lock()

    def crashed(self, name: str, uptime: float | None) -> None:
        with self.lock:
            if name in self.timers:
                return
            delay = self.policy.delay(name, uptime)
            timer = threading.Timer(delay, self._start, args=(name,))
            timer.daemon = True
            self.timers[name] = timer
        self.log.warning("%s is down; starting it again in %.1f s", name, delay)
        timer.start()

    def _start(self, name: str) -> None:
        with self.lock:
            self.timers.pop(name, None)
        try:
            rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (Faults.ALREADY_STARTED, Faults.SHUTDOWN_STATE):
                self.log.error("could not start %s: %s", name, fault.faultString)
        except OSError as exc:
            self.log.error("could not reach supervisord to start %s: %s", name, exc)


def mark_stop_requested(log: logging.Logger) -> None:
    """Tells entrypoint.sh that supervisord's coming exit is a `stop`, not a SIGTERM."""
    run_dir = os.environ.get("ENERGY_WORKER_RUN_DIR")
    try:
        if not run_dir:
            raise OSError("ENERGY_WORKER_RUN_DIR is not set")
        Path(run_dir, STOP_MARKER).write_text("the stop key\n")
    except OSError as exc:
        # The container then exits non-zero and is started again instead of staying stopped.
        log.error("could not mark the stop (%s); the exit will not count as one", exc)


class ExitListener:
    """The plugin's state: the restarter, and what to do with each exit."""

    def __init__(self, supervisord: Any, log: logging.Logger, restarter: Restarter) -> None:
        self.supervisord = supervisord
        self.log = log
        self.restarter = restarter
        self.said_ready = False

    def exited(self, event: Any) -> None:
        """A program left RUNNING (or STARTING): expected (exit 0) or a crash."""
        self.guarded(self._exited, event)

    def fatal(self, event: Any) -> None:
        self.guarded(lambda e: self.restarter.crashed(e.process.config.name, None), event)

    def guarded(self, act: Any, event: Any) -> None:
        # Called in supervisord's main loop: nothing of ours may ever take supervisord down.
        try:
            act(event)
        except Exception:
            self.log.exception("could not act on %s", type(event).__name__)

    def running(self, _event: Any) -> None:
        """A program entered RUNNING: once all of them are, the service is ready (said once)."""
        self.guarded(lambda _e: self._running(), _event)

    def _running(self) -> None:
        if self.said_ready:
            return
        from supervisor.states import ProcessStates  # noqa: PLC0415 - only inside supervisord

        processes = [
            p for g in self.supervisord.process_groups.values() for p in g.processes.values()
        ]
        if processes and all(p.get_state() == ProcessStates.RUNNING for p in processes):
            self.said_ready = True
            names = ", ".join(
                p.config.name for p in sorted(processes, key=lambda p: p.config.priority)
            )
            self.log.info("ready: %s running", names)

    def _exited(self, event: Any) -> None:
        process = event.process
        name = process.config.name
        # supervisord counts 143 (SIGTERM) as expected too, so that a stop it makes is logged as
        # a normal one; an exit it did not ask for is a crash unless it is the stop's 0.
        if process.exitstatus == 0:
            if name == FINISHER:
                self.log.info("processor finished the stop request; shutting supervisord down")
                mark_stop_requested(self.log)
                self.supervisord.options.mood = SupervisorStates.SHUTDOWN  # as the shutdown RPC
            else:
                self.log.info("%s finished after a stop request", name)
            return
        start, stop = process.laststart, process.laststop
        self.restarter.crashed(name, stop - start if start and stop >= start else None)


def policy_from_env() -> RestartPolicy:
    """RESTART_STABLE_AFTER (seconds) shortens what counts as a healthy run, for tests."""
    stable = float(os.environ.get("RESTART_STABLE_AFTER") or 10.0)
    return RestartPolicy(stable_after=stable)


def make_rpcinterface(supervisord: Any, **_config: str) -> ExitListener:
    """supervisord's plugin factory: subscribe to the programs' exits. (It serves no RPC
    methods of its own.)"""
    from supervisor import events  # noqa: PLC0415 - only inside supervisord

    log = plugin_logger()
    listener = ExitListener(supervisord, log, Restarter(log, policy_from_env()))
    events.subscribe(events.ProcessStateExitedEvent, listener.exited)
    events.subscribe(events.ProcessStateFatalEvent, listener.fatal)
    events.subscribe(events.ProcessStateRunningEvent, listener.running)
    calm_normal_events(supervisord)
    return listener


# Two of supervisord's lines that alarm at a normal event, said at INFO as what they are: the
# control socket without a password, logged right after the plugins are made (ours is a unix
# socket of mode 0700, supervisord.conf: only its owner can connect, which is what a password
# would ensure); and the signal that asks for the normal stop (Ctrl-C, `docker stop`).
SOCKET_ALARM = "Server 'unix_http_server' running without any HTTP authentication checking"
STOP_SIGNAL = re.compile(r"received (SIGINT|SIGTERM) indicating exit request")


def calm_normal_events(supervisord: Any) -> None:
    logger = getattr(getattr(supervisord, "options", None), "logger", None)
    if logger is None:
        return
    critical, warn = logger.critical, logger.warn

    def calm_critical(msg: str, **kw: Any) -> None:
        if msg == SOCKET_ALARM:
            logger.info("control socket: a unix socket of mode 0700, for its owner only")
        else:
            critical(msg, **kw)

    def calm_warn(msg: str, **kw: Any) -> None:
        stop = STOP_SIGNAL.fullmatch(msg) if isinstance(msg, str) else None
        if stop:
            logger.info(f"{stop.group(1)}: stopping the programs")
        else:
            warn(msg, **kw)

    logger.critical, logger.warn = calm_critical, calm_warn


def plugin_logger() -> logging.Logger:
    """Lines in the programs' format on supervisord's stderr, without touching supervisord's
    own logging (logs.setup would take over the whole process)."""
    log = logging.getLogger("energy_worker.runtime.exit_listener")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s exit_listener %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
        )
    )
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
