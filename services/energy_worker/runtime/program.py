"""How every program starts, follows its supervisor, reacts to SIGTERM and exits.

    program.run("router", main)   # main(termination) -> exit status

Exit statuses, the same for every program (docs/CONTRACT.md):
  0   after a stop (the stop protocol, docs/CONTRACT.md): the only expected exit
  1   its supervisor is gone, or an unexpected error
  2   a configuration error, said in one line
  143 SIGTERM (128 + 15): not a stop, so supervisord and the container restart it

SIGTERM ends a program at once, except inside a busy section (a batch between taking it from
Redis and acknowledging it), which it finishes first. Every other effect is transactional, so
stopping anywhere else loses nothing. A program that holds work back (the processor gathers a
few seconds of pulses per commit) asks for SIGTERM to be deferred: it then only wakes the
program's waits (Termination.sleep), and the program commits what it holds before it exits.

A program exits when its supervisor is gone (supervision.py).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from energy_worker.adapters import logs
from energy_worker.adapters.config import ConfigError
from energy_worker.runtime import supervision

EXIT_STOPPED = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_TERMINATED = 128 + signal.SIGTERM


class Termination:
    """The SIGTERM policy: exit at once, or at the end of the busy section it arrives in; or,
    deferred, only wake the program's waits and let it finish on its own."""

    def __init__(self, deferred: bool = False) -> None:
        self.requested = False
        self.deferred = deferred
        self._busy = 0
        self._wake = threading.Event()

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self._wake.set()
        if self._busy == 0 and not self.deferred:
            # SystemExit, not an Exception: no `except Exception` on the way can swallow it.
            raise SystemExit(128 + signum)

    def sleep(self, seconds: float) -> None:
        """Wait, unless SIGTERM has come or comes meanwhile."""
        if seconds > 0 and not self.requested:
            self._wake.wait(seconds)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A section SIGTERM lets finish; the program exits at its end if one came."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
        if self.requested and self._busy == 0 and not self.deferred:
            raise SystemExit(EXIT_TERMINATED)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)


def run(name: str, main: Callable[[Termination], int], deferred_sigterm: bool = False) -> None:
    """Set up logging, supervision and SIGTERM, run main, and exit with its status. A
    configuration error (ConfigError) exits 2 with one line."""
    log = logs.setup(name)
    termination = Termination(deferred_sigterm)
    termination.install()
    supervision.follow_supervisor(log)
    try:
        status = main(termination)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        status = EXIT_CONFIG
    except SystemExit as exc:
        if termination.requested:
            log.info("stopped by SIGTERM")
        raise SystemExit(exc.code) from None
    sys.exit(status)
