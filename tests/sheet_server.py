"""A real HTTP server standing in for the Google Sheet webhook: it records every request line
and answers as the test scripts it (a status, or hanging until released)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import wait_until

HANG = -1  # a scripted answer: never answer (until the server stops)


class SheetServer:
    def __init__(self, port: int = 0) -> None:
        self.lines: list[str] = []
        self.script: list[int] = []  # answers to give, in order; then default
        self.default = 200
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server.lock:
                    server.lines.append(self.requestline)
                    status = server.script.pop(0) if server.script else server.default
                if status == HANG:
                    server.release.wait(30)
                    return
                body = b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
def sheet_server(port: int = 0) -> Iterator[SheetServer]:
    server = SheetServer(port).start()
    try:
        yield server
    finally:
        server.stop()


def request_line(path_and_query: str) -> str:
    return f"GET {path_and_query} HTTP/1.1"
