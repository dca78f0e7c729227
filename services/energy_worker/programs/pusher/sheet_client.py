"""HTTP to the Google Sheet's web app (GOOGLE_WEBHOOK_URL; the payload is sheet_format.py's), on
requests.

requests does what an HTTP client must: proxies from the environment (HTTPS_PROXY, NO_PROXY),
certificate checks against certifi's roots, redirects, connection reuse. Configured here: a
timeout on every call, redirects followed only to https:// addresses (an Apps Script web app
answers with one redirect, to another Google host), and the answer read, because Apps Script
answers 200 when it fails too (sheet_answer.py tells a failure from a success). requests is
imported only when a URL is set: without one the pusher never loads it. Errors are reported by
kind, never by their text, which quotes the URL (a capability).
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from energy_worker.programs.pusher.sheet_answer import Answer, first_line
from energy_worker.programs.pusher.sheet_format import check_url, push_url, shown_url

if TYPE_CHECKING:
    import requests

MAX_BODY = 64 * 1024  # enough for the script's answer or a page's first lines
MAX_REDIRECTS = 5  # an Apps Script web app answers with one
CONNECT_TIMEOUT = 10.0


class SheetClient:
    """Sends readings to the sheet. Every call is bounded by `timeout` seconds for connecting
    and for each wait on the answer, and reads at most MAX_BODY of it until `timeout` has
    passed in all."""

    def __init__(self, url: str, timeout: float = 20.0) -> None:
        check_url(url)
        self.url = url
        self.timeout = timeout
        self.session = https_redirects_only()

    def __repr__(self) -> str:
        return f"SheetClient({shown_url(self.url)}, timeout={self.timeout})"

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    def send(self, data: str, extra: str = "") -> Answer:
        """GET the push of `data` (sheet.data_string), `extra` (sheet.fields) after it."""
        import requests  # noqa: PLC0415 - loaded with the session, in __init__

        deadline = time.monotonic() + self.timeout
        try:
            with self.session.get(
                push_url(self.url, data, extra),
                timeout=(min(self.timeout, CONNECT_TIMEOUT), self.timeout),
                stream=True,
                allow_redirects=True,
            ) as response:
                body = read_some(response, deadline)
                refused = refused_redirect(response)
                if refused is not None:
                    return Answer(response.status_code, error=refused)
                return Answer.of(
                    response.status_code, response.headers.get("Content-Type", ""), body
                )
        except requests.Timeout:
            return Answer(None, f"no answer within {self.timeout:g} s")
        except requests.TooManyRedirects:
            return Answer(None, f"more than {MAX_REDIRECTS} redirects")
        except requests.exceptions.SSLError as exc:
            return Answer(None, f"TLS error: {tls_reason(exc)}")
        except requests.exceptions.ProxyError:
            return Answer(None, "the proxy refused or failed (HTTPS_PROXY / HTTP_PROXY)")
        except requests.ConnectionError:
            return Answer(None, "connection failed")
        except requests.RequestException as exc:
            return Answer(None, f"request failed ({type(exc).__name__})")

    def close(self) -> None:
        self.session.close()


def https_redirects_only() -> requests.Session:
    """A Session that follows a redirect only to an https:// address: an http:// one would send
    the readings (and the capability in the URL) in clear; another scheme is no web app."""
    import requests  # noqa: PLC0415 - only a pusher with a URL pays for it

    class Session(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> str | None:
            target = super().get_redirect_target(resp)
            if target is None or urlsplit(urljoin(resp.url, target)).scheme != "https":
                return None  # the redirect itself is the answer: a failure (refused_redirect)
            return target

    session = Session()
    session.max_redirects = MAX_REDIRECTS
    session.headers["User-Agent"] = "energy-worker"
    return session


def refused_redirect(response: requests.Response) -> str | None:
    """Why a redirect answer was not followed, or None when the answer is no redirect."""
    location = response.headers.get("Location")
    if not response.is_redirect or not location:
        return None
    target = shown_url(urljoin(response.url, location))
    return f"a redirect to {target} is not followed (https only)"


def read_some(response: requests.Response, deadline: float) -> bytes:
    """The answer's first MAX_BODY bytes, or what came of them by the deadline."""
    import requests  # noqa: PLC0415

    body = b""
    try:
        for chunk in response.iter_content(4096):
            body += chunk
            if len(body) >= MAX_BODY or time.monotonic() > deadline:
                break
    except requests.RequestException:
        pass  # the status line has arrived; the body is judged by what came
    return body[:MAX_BODY]


def tls_reason(exc: BaseException) -> str:
    """The TLS library's own reason (a certificate's, a handshake's), found inside the errors
    that requests and urllib3 wrap around it, whose texts quote the URL."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate not accepted ({current.verify_message})"
        if isinstance(current, ssl.SSLError):
            return first_line(current.reason or type(current).__name__)
        todo += [*current.args, getattr(current, "reason", None)]
        todo += [current.__cause__, current.__context__]
    return "handshake failed"
