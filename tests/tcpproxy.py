"""A TCP forwarder the tests can cut: a real network fault between a process and a server.

cut(): every connection dropped and new ones refused, as a dead server would.
blackhole(): a partition, as when a Wi-Fi link or a switch fails: nothing gets through in either
direction, and nobody is told: connections stay open. After heal() new connections work again;
the old ones stay dead for good, as after a router restart that lost its connection state. So
the server keeps its end of them (and what the session holds) until it finds out by itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.partitioned = False
        self.sockets: set[socket.socket] = set()
        self.frozen: list[threading.Event] = []  # one per connection: set = blackholed
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            if self.partitioned:  # the handshake is the kernel's; nothing more gets through
                with self.lock:
                    self.sockets.add(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            frozen = threading.Event()
            with self.lock:
                if not self.up:  # cut while this connection was being made
                    client.close()
                    server.close()
                    continue
                self.sockets |= {client, server}
                self.frozen.append(frozen)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b, frozen), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, frozen: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if frozen.is_set():
                    self.closed.wait()  # swallowed; this connection is dead until the end
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if not frozen.is_set():
                for s in (source, sink):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones, as a dead server would."""
        with self.lock:
            self.up = False
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self) -> None:
        self.up = True

    def blackhole(self) -> None:
        """A partition: every connection made so far goes silent for good, in both directions,
        without being closed; new ones are accepted and hear nothing until heal()."""
        with self.lock:
            self.partitioned = True
            for frozen in self.frozen:
                frozen.set()

    def heal(self) -> None:
        """The network is back for new connections."""
        self.partitioned = False

    def close(self) -> None:
        self.closed.set()
        self.cut()
        self.listener.close()
