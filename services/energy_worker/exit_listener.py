"""supervisord event listener that acts on each program's exit: it starts a crashed program
again, with a delay that grows only in a crash loop, and ends supervisord once the processor
has finished a `stop` (the stop protocol, docs/CONTRACT.md).

Why not supervisord's own autorestart: supervisord only backs off a program that dies within
`startsecs`, and it treats even an exit 0 inside that window as a failed start and restarts the
program. A processor that finds a stop marker right after starting would then be started again
instead of ending the service. So the programs run with `startsecs=0` and `autorestart=false`,
and this listener decides:

- processor exited 0 (expected): everything before the stop marker is committed, so supervisord
  is told to shut down, after the stop marker file is written (entrypoint.sh reads it);
- any other expected exit (the router after routing the stop): it stays down;
- a crash (an exit status other than 0, a signal) or FATAL: started again after RestartPolicy's
  delay.

Its stdout is supervisor's event protocol; its log lines go to stderr. It speaks the protocol
and supervisord's XML-RPC with the standard library only: on a Raspberry Pi the listener is one
of six processes that share its memory, and supervisor's own helpers would double its size.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import logs, supervision

FINISHER = "processor"  # its expected exit means: the stop is complete
STOP_MARKER = "stop-requested"  # in $ENERGY_WORKER_RUN_DIR; entrypoint.sh looks for it
RECONCILE_RETRY = 5.0  # seconds between attempts to look at the programs at start


class Faults:
    """supervisord's XML-RPC fault codes that matter here (supervisor/xmlrpc.py)."""

    SHUTDOWN_STATE = 6
    ALREADY_STARTED = 60


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


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC to supervisord over its unix socket (supervisord.conf's [unix_http_server])."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixConnection(self.path)


def rpc() -> Any:
    """A fresh XML-RPC proxy to supervisord (proxies are not shared between threads)."""
    url = os.environ.get("SUPERVISOR_SERVER_URL", "")
    if not url.startswith("unix://"):
        raise OSError(f"supervisord's address is not a unix socket: {url!r}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", UnixTransport(url[len("unix://") :]))
    return proxy


def wait_for_event(stdin: TextIO, stdout: TextIO) -> tuple[dict[str, str], str]:
    """Say READY, then read one event: its header and its payload (the event protocol)."""
    stdout.write("READY\n")
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError("supervisord closed the event stream")
    headers = parse_tokens(line)
    payload = stdin.read(int(headers.get("len", "0")))
    return headers, payload


def acknowledge(stdout: TextIO) -> None:
    stdout.write("RESULT 2\nOK")
    stdout.flush()


def parse_tokens(line: str) -> dict[str, str]:
    """`key:value key:value ...` as supervisord writes headers and PROCESS_STATE payloads."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


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


def uptime_of(info: dict[str, Any], now: Callable[[], float] = time.time) -> float | None:
    """How long a stopped program had been up, from supervisord's process info."""
    start, stop = info.get("start") or 0, info.get("stop") or 0
    if not start:
        return None
    return float((stop if stop >= start else now()) - start)


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


def handle(event: str, headers: dict[str, str], restarter: Restarter, log: logging.Logger) -> None:
    name = headers.get("processname", "")
    if event == "PROCESS_STATE_EXITED" and headers.get("expected") == "1":
        if name == FINISHER:
            log.info("processor finished the stop request; shutting supervisord down")
            mark_stop_requested(log)
            try:
                rpc().supervisor.shutdown()
            except xmlrpc.client.Fault as fault:
                if fault.faultCode != Faults.SHUTDOWN_STATE:
                    raise
        else:
            log.info("%s finished after a stop request", name)
        return
    if event in ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"):
        try:
            info = rpc().supervisor.getProcessInfo(name)
        except (xmlrpc.client.Fault, OSError):
            info = {}
        restarter.crashed(name, uptime_of(info))


def reconcile(me: str, restarter: Restarter, log: logging.Logger) -> None:
    """On (re)start of this listener: act on what happened while it was not listening."""
    for info in rpc().supervisor.getAllProcessInfo():
        name = info["name"]
        if name == me:
            continue
        if info["statename"] == "EXITED" and info["exitstatus"] == 0:
            handle("PROCESS_STATE_EXITED", {"processname": name, "expected": "1"}, restarter, log)
        elif info["statename"] in ("EXITED", "FATAL"):
            restarter.crashed(name, uptime_of(info))


def reconcile_at_start(me: str, restarter: Restarter, log: logging.Logger) -> None:
    """reconcile(), which must never end this listener: were it to crash three times at once,
    supervisord would give it up (FATAL), and crashed programs would stay down for good. It
    tries again later while supervisord cannot answer, and gives up when it is shutting down."""
    try:
        reconcile(me, restarter, log)
        return
    except xmlrpc.client.Fault as fault:
        if fault.faultCode == Faults.SHUTDOWN_STATE:
            log.info("supervisord is shutting down; no programs to look after")
            return
        problem = f"{fault.faultString} (fault {fault.faultCode})"
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    log.error(
        "could not look at the programs at start (%s); trying again in %.0f s",
        problem,
        RECONCILE_RETRY,
    )
    timer = threading.Timer(RECONCILE_RETRY, reconcile_at_start, args=(me, restarter, log))
    timer.daemon = True
    timer.start()


def policy_from_env() -> RestartPolicy:
    """RESTART_STABLE_AFTER (seconds) shortens what counts as a healthy run, for tests."""
    stable = float(os.environ.get("RESTART_STABLE_AFTER") or 10.0)
    return RestartPolicy(stable_after=stable)


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    log = logs.setup("exit_listener")
    supervision.follow_supervisor(log)
    me = os.environ.get("SUPERVISOR_PROCESS_NAME", "exit_listener")
    restarter = Restarter(log, policy_from_env())
    reconcile_at_start(me, restarter, log)
    while True:
        try:
            headers, payload = wait_for_event(stdin, stdout)
        except EOFError:
            return 0  # supervisord is gone
        event = headers.get("eventname", "")
        # PROCESS_STATE payloads are one line of key:value pairs and no body.
        body = parse_tokens(payload.split("\n", 1)[0])
        try:
            if body.get("processname") != me:
                handle(event, body, restarter, log)
        except Exception:
            log.exception("could not handle %s of %s", event, body.get("processname"))
        acknowledge(stdout)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
