"""Supervisor event listener: restarts crashed programs with backoff, and ends supervisord
once the processor has finished a `stop`.

Why not supervisord's own autorestart: supervisord only backs off a program that dies within
`startsecs`, and it treats even an exit 0 inside that window as a failed start and restarts
the program. A processor that finds a stop marker right after starting would then be started
again instead of ending the service. So the programs run with `startsecs=0` and
`autorestart=false`, and this listener decides:

- processor exited 0 (expected): everything before the stop marker is committed (see
  docs/CONTRACT.md), so supervisord is told to shut down; it then exits 0. Just before, the
  file $ENERGY_WORKER_RUN_DIR/stop-requested is written: supervisord exits 0 on a SIGTERM too,
  and entrypoint.sh exits 0 (the container stays stopped) only when it finds this file.
- any other expected exit (the router after routing the stop): it stays down.
- a crash (an exit code other than 0, a signal) or FATAL: started again after a delay that
  doubles from 1 s up to 60 s, back to 1 s once the program had stayed up for a minute.

Its stdout is supervisor's event protocol; its log lines go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import xmlrpc.client
from pathlib import Path
from typing import Any, TextIO

from supervisor import childutils
from supervisor.xmlrpc import Faults

from . import logs

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
STABLE_AFTER = 60.0  # seconds up after which a crash no longer counts as a crash loop
FINISHER = "processor"  # its expected exit means: the stop is complete
STOP_MARKER = "stop-requested"  # in $ENERGY_WORKER_RUN_DIR; entrypoint.sh looks for it
RECONCILE_RETRY = 5.0  # seconds between attempts to look at the programs at start


def rpc() -> Any:
    """A fresh XML-RPC proxy to supervisord (proxies are not shared between threads)."""
    return childutils.getRPCInterface(os.environ)


class Restarter:
    """Starts crashed programs again, each after its own growing delay."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.delays: dict[str, float] = {}
        self.timers: dict[str, threading.Timer] = {}
        self.lock = threading.Lock()

    def crashed(self, name: str, uptime: float | None) -> None:
        with self.lock:
            if name in self.timers:
                return
            delay = self.delays.get(name, FIRST_DELAY)
            if uptime is not None and uptime >= STABLE_AFTER:
                delay = FIRST_DELAY
            self.delays[name] = min(delay * 2, MAX_DELAY)
            timer = threading.Timer(delay, self._start, args=(name,))
            timer.daemon = True
            self.timers[name] = timer
        self.log.warning("%s is down; starting it again in %.0f s", name, delay)
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


def uptime_of(info: dict[str, Any]) -> float | None:
    start, stop = info.get("start") or 0, info.get("stop") or 0
    return float(stop - start) if start and stop >= start else None


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


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    log = logs.setup("stopwatch")
    me = os.environ.get("SUPERVISOR_PROCESS_NAME", "stopwatch")
    restarter = Restarter(log)
    reconcile_at_start(me, restarter, log)
    while True:
        headers, payload = childutils.listener.wait(stdin, stdout)
        event = headers.get("eventname", "")
        # PROCESS_STATE payloads are one line of key:value pairs and no body.
        body = childutils.get_headers(payload.split("\n", 1)[0])
        try:
            if body.get("processname") != me:
                handle(event, body, restarter, log)
        except Exception:
            log.exception("could not handle %s of %s", event, body.get("processname"))
        childutils.listener.ok(stdout)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
