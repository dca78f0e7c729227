"""A real HTTP server standing in for the Google Sheet webhook (or a proxy in front of it): it
records every request line and answers as the test scripts it (a status, a Reply with a body,
a type and headers, or hanging until released); with a certificate, it speaks TLS."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import wait_until

HANG = -1  # a scripted answer: never answer (until the server stops)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = "ok"
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class SheetServer:
    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.lines: list[str] = []
        self.script: list[int | Reply] = []  # answers to give, in order; then default
        self.default: int | Reply = 200
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
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


@contextmanager
def sheet_server(port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[SheetServer]:
    server = SheetServer(port, tls).start()
    try:
        yield server
    finally:
        server.stop()


def request_line(path_and_query: str) -> str:
    return f"GET {path_and_query} HTTP/1.1"
