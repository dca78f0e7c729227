"""A program exits when its supervisor is gone (kill -9 of supervisord, a closed terminal under
`make run`): the kernel sends it SIGTERM then (PR_SET_PDEATHSIG), whatever it is doing: waiting
out an outage, blocked on Redis, or inside a batch, which it finishes. It never runs on
unsupervised, holding locks and connections, or worse, clearing keys of a server that has
since taken its port. (Standard library only: the exit listener uses it too.)
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from pathlib import Path

EXIT_ORPHANED = 1  # program.EXIT_FAILED
_PR_SET_PDEATHSIG = 1


def follow_supervisor(log: logging.Logger) -> None:
    """Ask the kernel for SIGTERM when the process that started this one ends (Linux). A
    supervisor that died before we asked is noticed too: our parent is then not the supervisord
    whose pid file the run directory holds."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        return
    expected = supervisord_pid()
    if os.getppid() != parent or expected not in (None, parent):
        log.error("the process that started this one is gone; exiting")
        raise SystemExit(EXIT_ORPHANED)


def supervisord_pid() -> int | None:
    """The pid of the supervisord that started this program, if one did (supervisord.conf
    keeps its pid file in ENERGY_WORKER_RUN_DIR)."""
    run_dir = os.environ.get("ENERGY_WORKER_RUN_DIR")
    if not os.environ.get("SUPERVISOR_ENABLED") or not run_dir:
        return None
    try:
        return int(Path(run_dir, "supervisord.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
