"""The Google Sheet webhook's HTTP client (the format is sheet.py), on the standard library's
http.client: the pusher stays small on a Raspberry Pi. Errors are reported by kind, never by
their text, which can quote the URL."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .sheet import check_url, push_url, shown_url

MAX_BODY = 64 * 1024  # the answer's body is not used; a little is read, as a client should
MAX_REDIRECTS = 5  # an Apps Script web app answers with one redirect
REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status of the answer; None when no answer came
    error: str | None = None  # why it failed, safe for a log line

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        return f"HTTP {self.status}"


class Webhook:
    """Sends readings to the sheet. Every call is bounded by `timeout` seconds in all,
    redirects included, so a hanging webhook costs at most that."""

    def __init__(self, url: str, timeout: float = 20.0) -> None:
        check_url(url)
        self.url = url
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Webhook({shown_url(self.url)}, timeout={self.timeout})"

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def send(self, data: str) -> Answer:
        deadline = time.monotonic() + self.timeout
        url = push_url(self.url, data)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                status, location = get(url, deadline)
                if status not in REDIRECTS or not location:
                    return Answer(status)
                url = urljoin(url, location)
            return Answer(None, "too many redirects")
        except TimeoutError:
            return Answer(None, f"no answer within {self.timeout:g} s")
        except (OSError, http.client.HTTPException, ValueError):
            return Answer(None, "connection failed")

    def close(self) -> None:
        """Nothing stays open between pushes (one a day)."""


def get(url: str, deadline: float) -> tuple[int, str | None]:
    """One GET: the answer's status and Location; raises TimeoutError past the deadline."""
    parts = urlsplit(url)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.netloc, timeout=left)
    else:
        connection = http.client.HTTPConnection(parts.netloc, timeout=left)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request("GET", target, headers={"User-Agent": "energy-worker"})
        response = connection.getresponse()
        read = 0
        while read < MAX_BODY and time.monotonic() < deadline:
            if connection.sock is not None:
                connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = response.read1(4096)
            if not chunk:
                break
            read += len(chunk)
        return response.status, response.getheader("Location")
    except TimeoutError:
        raise TimeoutError from None
    finally:
        connection.close()
