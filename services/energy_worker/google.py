"""The Google Sheet webhook client (DOMAIN.md, "The Google Sheet push").

`GET <GOOGLE_WEBHOOK_URL>?function=updateSheet&dataString=279.97,752.04,...`: each meter's kWh
to two decimals, in meter order, commas literal. The URL is a capability (an Apps Script URL's
path is its key, and a query string may hold a token), so a URL is only ever shown as its
scheme and host, and errors are reported by kind, never by their text, which quotes the URL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

import requests

FUNCTION = "updateSheet"
CENT = Decimal("0.01")
MAX_BODY = 64 * 1024  # the answer's body is not used; read a little so the connection is reusable
MAX_REDIRECTS = 5  # an Apps Script web app answers with one redirect


def kwh_text(kwh: Decimal | None) -> str:
    """A reading to two decimals; a meter without any reading yet shows 0.00, as meter_status
    (whose kWh starts at 0) would."""
    value = (kwh if kwh is not None else Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{value:f}"


def data_string(readings: Sequence[Decimal | None]) -> str:
    return ",".join(kwh_text(kwh) for kwh in readings)


def push_url(base: str, data: str) -> str:
    """The request URL: a base with a query string of its own gets `&function=...`."""
    base, _, _fragment = base.partition("#")  # a fragment is never sent anyway
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return f"{base}{separator}function={FUNCTION}&dataString={data}"


def shown_url(url: str) -> str:
    """What a log line may say about a URL: scheme and host only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme or '?'}://{host}{port}"


def check_url(url: str) -> None:
    """Raise ValueError (without the URL in it) unless url is an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ValueError("GOOGLE_WEBHOOK_URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("GOOGLE_WEBHOOK_URL must be an absolute http:// or https:// URL")


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
