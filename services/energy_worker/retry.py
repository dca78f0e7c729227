"""Backoff for lost connections, logging once per change of state rather than per attempt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """Tracks one dependency (PostgreSQL or Redis): down since when, and how long to wait."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        first_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.log = log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.down_since: float | None = None
        self.delay = first_delay

    def failed(self, exc: BaseException) -> None:
        """Record a failure and wait before the next attempt."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning(
                "%s unavailable (%s); retrying with backoff", self.name, describe_error(exc)
            )
        else:
            self.log.debug("%s still unavailable: %s", self.name, describe_error(exc))
        self.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_delay)

    def succeeded(self) -> None:
        if self.down_since is not None:
            self.log.warning(
                "%s is back after %.1f s", self.name, time.monotonic() - self.down_since
            )
        self.down_since = None
        self.delay = self.first_delay


def describe_error(exc: BaseException) -> str:
    """A short description of a connection error (its class and first line, no secrets)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
