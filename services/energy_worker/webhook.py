"""The Google Sheet webhook's HTTP client (the format is sheet.py). Errors are reported by
kind, never by their text, which quotes the URL."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from .sheet import check_url, push_url, shown_url

MAX_BODY = 64 * 1024  # the answer's body is not used; read a little so the connection is reusable
MAX_REDIRECTS = 5  # an Apps Script web app answers with one redirect


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
    """Sends readings to the sheet. Every call is bounded by `timeout` seconds per connection
    step and in total for reading the answer, so a hanging webhook costs at most that."""

    def __init__(self, url: str, timeout: float = 20.0) -> None:
        check_url(url)
        self.url = url
        self.timeout = timeout
        self.session = requests.Session()
        self.session.max_redirects = MAX_REDIRECTS

    def __repr__(self) -> str:
        return f"Webhook({shown_url(self.url)}, timeout={self.timeout})"

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def send(self, data: str) -> Answer:
        deadline = time.monotonic() + self.timeout
        try:
            with self.session.get(
                push_url(self.url, data),
                timeout=(min(self.timeout, 10.0), self.timeout),
                stream=True,
                allow_redirects=True,
            ) as response:
                read = 0
                try:
                    for chunk in response.iter_content(4096):
                        read += len(chunk)
                        if read >= MAX_BODY or time.monotonic() > deadline:
                            break
                except requests.RequestException:
                    pass  # the status line is what counts, and it has arrived
                return Answer(response.status_code)
        except requests.Timeout:
            return Answer(None, f"no answer within {self.timeout:g} s")
        except requests.TooManyRedirects:
            return Answer(None, "too many redirects")
        except requests.ConnectionError:
            return Answer(None, "connection failed")
        except requests.RequestException as exc:
            return Answer(None, f"request failed ({type(exc).__name__})")

    def close(self) -> None:
        self.session.close()
