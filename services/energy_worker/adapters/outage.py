"""Backoff for a lost dependency (PostgreSQL, Redis, a broker), logging once per change of state
rather than per attempt."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

# A password in a message: a URL's user:password@, or password=... (a DSN's key-value form).
_SECRETS = (
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),
    (
        re.compile(r"(?i)(\bpass(?:word|wd)?[\"']?\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;]+)"),
        r"\1***",
    ),
)


class Outage:
    """Tracks one dependency: down since when, and how long to wait before the next attempt."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.log = log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.down_since: float | None = None
        self.delay = first_delay
        self.refusal: str | None = None  # the statement error last logged

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> None:
        """The dependency is unreachable: record it and wait before the next attempt."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning(
                "%s unavailable (%s); retrying with backoff", self.name, describe_error(exc)
            )
        else:
            self.log.debug("%s still unavailable: %s", self.name, describe_error(exc))
        self.wait()

    def waiting(self, exc: BaseException, every: float) -> None:
        """The dependency answered, and made us wait (another process holds a lock): said
        once, then tried every `every` seconds."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning(
                "%s: %s; trying again every %g s", self.name, describe_error(exc), every
            )
        self.sleep(every)

    def refused(self, exc: BaseException) -> None:
        """The dependency answered, and refused what we asked (a bug, a full disk, a changed
        schema): say what it refused, once per distinct refusal, and wait as for an outage."""
        text = describe_error(exc)
        if text != self.refusal:
            self.refusal = text
            self.log.error("%s refused a statement (%s); retrying with backoff", self.name, text)
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.wait()

    def wait(self) -> None:
        self.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_delay)

    def succeeded(self) -> None:
        if self.down_since is not None:
            self.log.warning(
                "%s is back after %.1f s", self.name, time.monotonic() - self.down_since
            )
        self.down_since = None
        self.refusal = None
        self.delay = self.first_delay


def describe_error(exc: BaseException) -> str:
    """A short description of an error (its class and first line, no secrets: a password in a
    URL or a DSN is masked). A PostgreSQL error (pg8000 passes the server's fields as a dict)
    shows its SQLSTATE and message."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else None
    if fields is not None and "M" in fields:
        text = f"{fields.get('C', '?')} {fields['M']}"
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
    for secret, mask in _SECRETS:  # before truncating: a cut password would no longer match
        text = secret.sub(mask, text)
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
