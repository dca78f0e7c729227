"""Logging shared by the processes: one line per event on stderr, the process name on each.

The webhook's `debug` key (true/false) switches every process to verbose logging; each process
looks at it when it wakes anyway (DebugSwitch.refresh), so the switch costs no extra polling.
Foreign input is only ever logged through quoted(): printable, quoted and truncated.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType

DEBUG_KEY = "debug"
MAX_SHOWN = 80  # characters of foreign input shown in a log line


def setup(process: str) -> logging.Logger:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {process} %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    # Libraries stay quiet, even in debug mode (schedule logs every job it runs); we log what
    # we need ourselves, and never a URL, whose path or query can hold a key.
    logging.getLogger("schedule").setLevel(logging.WARNING)
    # urllib3 (under requests) puts whole URLs into its warnings: never shown
    logging.getLogger("urllib3").setLevel(logging.CRITICAL + 1)
    log = logging.getLogger(process)

    # Uncaught exceptions are logged too, every line with the process name.
    def uncaught(
        kind: type[BaseException],
        exc: BaseException | None,
        tb: TracebackType | None,
        where: str = "",
    ) -> None:
        log.critical("uncaught exception%s:", where)
        for line in "".join(traceback.format_exception(kind, exc, tb)).rstrip().splitlines():
            log.critical("%s", line)

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:
            name = args.thread.name if args.thread else "?"
            uncaught(args.exc_type, args.exc_value, args.exc_traceback, f" in thread {name}")

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    return log


def quoted(value: bytes | str, limit: int = MAX_SHOWN) -> str:
    """Foreign input made safe for one log line: printable, quoted, truncated."""
    return f"'{printable(value, limit)}'"


def printable(value: bytes | str, limit: int = MAX_SHOWN) -> str:
    """Foreign input made safe for one line of a log or a terminal: escape sequences, line
    breaks and other control characters escaped, truncated. Only its first bytes are decoded
    and escaped, so input of megabytes costs no more than a short one; the length shown is
    the whole input's (bytes, or characters of a str)."""
    size = len(value)
    # A character is at most 4 bytes of UTF-8: enough of them for `limit` characters.
    head = value[: limit * 4]
    text = head.decode("utf-8", "backslashreplace") if isinstance(head, bytes) else head
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > limit or len(head) < size:
        unit = "bytes" if isinstance(value, bytes) else "chars"
        text = text[:limit] + f"...({size} {unit} in all)"
    return text


class Limited:
    """Warnings of one sort at a bounded rate, so that a flood of bad input cannot flood the
    log: the first `burst` of an interval in full, then, once the interval is over, one line
    with the count of the others. flush() says that count when it is due (called whenever
    the program wakes)."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        burst: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what  # the sort, plural: "rejections"
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.started = float("-inf")
        self.shown = 0
        self.held = 0

    def warning(self, message: str, *args: object) -> None:
        self.flush()
        if self.shown < self.burst:
            if not self.shown:
                self.started = self.clock()
            self.shown += 1
            self.log.warning(message, *args)
        else:
            self.held += 1

    def flush(self) -> None:
        """At the end of an interval: the count of the lines not shown, if any."""
        if self.clock() - self.started < self.interval:
            return
        if self.held:
            self.log.warning(
                "%d more %s in the last %.0f s, not shown one by one",
                self.held,
                self.what,
                self.clock() - self.started,
            )
        self.shown = self.held = 0
        self.started = float("-inf")


class DebugSwitch:
    """Follows the webhook's `debug` key; looks at it at most every `interval` seconds."""

    def __init__(self, log: logging.Logger, interval: float = 2.0) -> None:
        self.log = log
        self.interval = interval
        self.base_level = logging.getLogger().level
        self.enabled = False
        self._checked = float("-inf")

    def refresh(self, read: Callable[[], bytes | str | None]) -> None:
        """Look at the key (read() returns its value) if `interval` has passed since the last
        look. read() may raise; the caller's own handling reports an outage."""
        now = time.monotonic()
        if now - self._checked < self.interval:
            return
        self._checked = now
        self.apply(read())

    def apply(self, value: bytes | str | None) -> None:
        if isinstance(value, str):
            value = value.encode()
        enabled = value is not None and value.lower() == b"true"
        if enabled == self.enabled:
            return
        self.enabled = enabled
        logging.getLogger().setLevel(logging.DEBUG if enabled else self.base_level)
        self.log.info("debug logging %s (debug key)", "on" if enabled else "off")
