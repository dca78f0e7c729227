"""A real HTTP server standing in for the Google Sheet webhook (or a proxy in front of it): it
records every request line and answers as the test scripts it (a status, a Reply with a body,
a type and headers, or hanging until released); with a certificate, it speaks TLS.

With an AppsScript it is script-like, as Google's web app is: a GET of /macros/s/<key>/exec runs
the real docs/google-apps-script/Code.gs (in V8, on in-memory fakes of Google's services:
tests/apps_script_fakes.js) and answers with a redirect to /macros/echo, which gives the
script's answer. The test can make the first follows of that redirect fail (the connection is
closed without an answer), or have a sign-in page answered instead of running the script (a
web app whose "Who has access" is not "Anyone"). Over https, as Google's (redirects are followed
only to https)."""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from py_mini_racer import MiniRacer

from helpers import REPO, wait_until

HANG = -1  # a scripted answer: never answer (until the server stops)
SCRIPT = REPO / "docs" / "google-apps-script" / "Code.gs"
FAKES = REPO / "tests" / "apps_script_fakes.js"
SIGN_IN_PAGE = (
    b"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Sign in - Google "
    b"Accounts</title></head><body><form action=/signin>Email or phone</form></body></html>"
)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = "ok"
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class AppsScript:
    """docs/google-apps-script/Code.gs running in V8 on fakes of Google's services."""

    def __init__(self) -> None:
        self.v8 = MiniRacer()
        self.v8.eval(FAKES.read_text())
        self.v8.eval(SCRIPT.read_text())
        self.lock = threading.Lock()  # one request at a time, as V8 wants

    def get(self, parameter: dict[str, str]) -> str:
        with self.lock:
            return str(self.v8.call("fakeGet", parameter))

    def cells(self, sheet: str = "Meter readings") -> list[list[Any]]:
        """The sheet's rows (the header first), dates as ISO text; [] if there is none."""
        with self.lock:
            text = self.v8.call("fakeCells", sheet)
        return [] if text is None else list(json.loads(text))

    def lock_busy(self, busy: bool) -> None:
        with self.lock:
            self.v8.call("fakeLockBusy", busy)


class SheetServer:
    def __init__(
        self,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        apps_script: AppsScript | None = None,
    ) -> None:
        self.lines: list[str] = []
        self.script: list[int | Reply] = []  # answers to give, in order; then default
        self.default: int | Reply = 200
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.apps_script = apps_script
        self.echoes: dict[str, str] = {}  # the script's answers, by user_content_key
        self.fail_follows = 0  # this many follows of the redirect fail (no answer)
        self.sign_in = False  # answer a sign-in page instead of running the script
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if server.apps_script is not None:
                    server.script_like(self)
                    return
                with server.lock:
                    server.lines.append(self.requestline)
                    reply = server.script.pop(0) if server.script else server.default
                if reply == HANG:
                    server.release.wait(30)
                    return
                if isinstance(reply, int):
                    reply = Reply(reply)
                body = reply.body.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_CONNECT = do_GET  # as a proxy: an https:// request asks for a tunnel first

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def script_like(self, handler: BaseHTTPRequestHandler) -> None:
        """As Google's web app: /exec runs the script and redirects to /echo, its answer."""
        assert self.apps_script is not None
        with self.lock:
            self.lines.append(handler.requestline)
        parts = urlsplit(handler.path)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        if parts.path.startswith("/macros/s/") and parts.path.endswith("/exec"):
            if self.sign_in:
                answer(handler, 200, SIGN_IN_PAGE, "text/html; charset=utf-8")
                return
            text = self.apps_script.get(query)  # the script runs on the first request
            key = uuid.uuid4().hex
            with self.lock:
                self.echoes[key] = text
            location = f"{self.base}/macros/echo?user_content_key={key}&lib=M"
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if parts.path == "/macros/echo":
            with self.lock:
                failing = self.fail_follows > 0
                self.fail_follows -= failing
                echo = self.echoes.get(query.get("user_content_key", ""))
            if failing:  # the follow fails: closed without an answer
                handler.close_connection = True
                return
            if echo is not None:
                answer(handler, 200, echo.encode(), "text/plain; charset=utf-8")
                return
        answer(handler, 404, b"not found", "text/plain")

    @property
    def base(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"  # the certificate's name
        return f"{self.scheme}://{host}:{self.port}"

    def got(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        wait_until(lambda: len(self.got()) >= count, timeout, what=f"{count} request(s)")
        return self.got()

    def start(self) -> SheetServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def script_server(tls: ssl.SSLContext) -> Iterator[SheetServer]:
    """A script-like server running docs/google-apps-script/Code.gs, over https (module doc)."""
    server = SheetServer(tls=tls, apps_script=AppsScript()).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def sheet_server(port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[SheetServer]:
    server = SheetServer(port, tls).start()
    try:
        yield server
    finally:
        server.stop()


def request_line(path_and_query: str) -> str:
    return f"GET {path_and_query} HTTP/1.1"
