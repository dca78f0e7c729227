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
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return f"'{text}'"


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
