"""A small Redis client: the RESP2 protocol over one socket, for the commands we send.

Why not redis-py: importing it cost each program 7 to 14 MiB of memory (it pulls in asyncio,
importlib.metadata and every command of every Redis module), 23 MiB over the three, where all
the service's processes together should stay under 80 MiB on a Pi. This is the standard
library's socket and the commands energy-worker sends, named as redis-py names them.

Failure rules, which the programs' exactness rests on:
- A connection that failed, timed out or answered nonsense is closed and never reused: the
  next command connects afresh.
- A command is retried (with `retries` and a short backoff) only when it cannot have reached
  the server: connecting failed, or the connection was found closed before it was written.
  Once written, a lost connection raises, so no command runs twice behind the caller's back.
- The server's error answers raise ResponseError and leave the connection usable; but
  LOADING (a restarted server reading its data back) is an outage, as a lost connection is.
"""

from __future__ import annotations

import hashlib
import select
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

Arg = bytes | str | int | float
Reply = Any  # bytes | int | None | RedisError | list[Reply], as the command answers
RECV_BYTES = 65536


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class ConnectionFailed(RedisError):
    """No connection, or it broke: the command may or may not have run."""


class TimedOut(ConnectionFailed):
    """No answer within the socket timeout."""


class ResponseError(RedisError):
    """The server answered with an error (the connection is still good)."""


class AuthenticationError(ResponseError):
    """The server refused our user name or password."""


class Loading(ConnectionFailed):
    """The server is up but still reading its data back: it ran nothing; try again later."""


def error_answer(message: str) -> RedisError:
    return Loading(message) if message.startswith("LOADING") else ResponseError(message)


class _Incomplete(Exception):
    """The buffer holds no whole reply yet (only while not waiting for more)."""


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool):
            raise TypeError("a bool is no Redis argument; send 0 or 1")
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """One socket to the server, with the handshake (AUTH, SELECT) and the reply parser."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.last_used = 0.0

    def connect(self) -> None:
        s = self.settings
        try:
            sock = socket.create_connection((s.host, s.port), s.connect_timeout)
        except TimeoutError as exc:
            raise TimedOut(f"Timeout connecting to {s.host}:{s.port}") from exc
        except OSError as exc:
            raise ConnectionFailed(f"Error connecting to {s.host}:{s.port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if s.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(s.timeout)
        self.sock = sock
        self.buffer.clear()
        try:
            if s.password is not None:
                auth = ("AUTH", s.username, s.password) if s.username else ("AUTH", s.password)
                try:
                    self.call(auth)
                except ResponseError as exc:
                    raise AuthenticationError(str(exc)) from None
            if s.db:
                self.call(("SELECT", s.db))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffer.clear()

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def is_stale(self) -> bool:
        """The server closed it (or said something unasked) while it was idle."""
        if self.sock is None:
            return True
        if self.buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._failed(exc, "writing to") from exc
        self.last_used = time.monotonic()

    def call(self, args: Sequence[Arg]) -> Reply:
        self.send(pack(args))
        return self.read()

    def read(self) -> Reply:
        """The next reply, waiting for it; an error answer raises."""
        reply = self.parse(wait=True)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def read_within(self, timeout: float) -> Reply | _Incomplete:
        """The next reply if one comes within timeout seconds, else an _Incomplete."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.parse(wait=False)
            except _Incomplete as incomplete:
                left = deadline - time.monotonic()
                assert self.sock is not None
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return incomplete
                self._receive()

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except OSError as exc:
            raise self._failed(exc, "reading from") from exc
        if not chunk:
            self.close()
            raise ConnectionFailed("Connection closed by server.")
        self.buffer += chunk
        self.last_used = time.monotonic()

    def _failed(self, exc: OSError, doing: str) -> ConnectionFailed:
        """A socket error: the connection is closed, never to be reused (a reply may be late)."""
        self.close()
        if isinstance(exc, TimeoutError):
            return TimedOut(f"Timeout {doing} the socket")
        return ConnectionFailed(f"Error {doing} the socket: {exc}")

    def parse(self, wait: bool) -> Reply:
        """One whole reply from the buffer, receiving more while wait is true; the buffer is
        left untouched when the reply is not whole yet."""
        pos = 0

        def line() -> bytes:
            nonlocal pos
            while (end := self.buffer.find(b"\r\n", pos)) < 0:
                more(len(self.buffer) + 1)
            text = bytes(self.buffer[pos:end])
            pos = end + 2
            return text

        def more(needed: int) -> None:
            while len(self.buffer) < needed:
                if not wait:
                    raise _Incomplete
                self._receive()

        def reply() -> Reply:
            nonlocal pos
            text = line()
            kind, rest = text[:1], text[1:]
            try:
                if kind == b"+":
                    return rest
                if kind == b"-":
                    return error_answer(rest.decode("utf-8", "replace"))
                if kind == b":":
                    return int(rest)
                if kind == b"$":
                    size = int(rest)
                    if size < 0:
                        return None
                    more(pos + size + 2)
                    data = bytes(self.buffer[pos : pos + size])
                    pos += size + 2
                    return data
                if kind == b"*":
                    count = int(rest)
                    return None if count < 0 else [reply() for _ in range(count)]
            except ValueError:
                pass
            self.close()
            raise ConnectionFailed(f"Protocol error: unexpected reply {text[:40]!r}")

        result = reply()
        del self.buffer[:pos]
        return result


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    connect_timeout: float = 5.0
    timeout: float | None = None  # per read or write; None: wait forever
    keepalive: bool = False
    health_check_interval: float = 0.0  # PING a connection idle this long before using it
    retries: int = 0  # further attempts of a command that cannot have reached the server


class Commands:
    """The commands, by redis-py's names. A Redis client answers each at once; a Pipeline
    queues it and answers them all from execute()."""

    def execute_command(self, *args: Arg) -> Reply:
        raise NotImplementedError

    def ping(self) -> bool:
        return bool(self.execute_command("PING") == b"PONG")

    def get(self, name: Arg) -> bytes | None:
        return cast(bytes | None, self.execute_command("GET", name))

    def set(self, name: Arg, value: Arg, *, nx: bool = False) -> bool:
        """SET; with nx, only if the key does not exist (False: it did)."""
        args: list[Arg] = ["SET", name, value, "NX"] if nx else ["SET", name, value]
        return self.execute_command(*args) is not None

    def delete(self, *names: Arg) -> int:
        return cast(int, self.execute_command("DEL", *names))

    def exists(self, *names: Arg) -> int:
        return cast(int, self.execute_command("EXISTS", *names))

    def incr(self, name: Arg) -> int:
        return cast(int, self.execute_command("INCR", name))

    def lpush(self, name: Arg, *values: Arg) -> int:
        return cast(int, self.execute_command("LPUSH", name, *values))

    def rpush(self, name: Arg, *values: Arg) -> int:
        return cast(int, self.execute_command("RPUSH", name, *values))

    def llen(self, name: Arg) -> int:
        return cast(int, self.execute_command("LLEN", name))

    def lindex(self, name: Arg, index: int) -> bytes | None:
        return cast(bytes | None, self.execute_command("LINDEX", name, index))

    def lrange(self, name: Arg, start: int, end: int) -> list[bytes]:
        return cast(list[bytes], self.execute_command("LRANGE", name, start, end))

    def ltrim(self, name: Arg, start: int, end: int) -> None:
        self.execute_command("LTRIM", name, start, end)

    def lrem(self, name: Arg, count: int, value: Arg) -> int:
        return cast(int, self.execute_command("LREM", name, count, value))

    def lmove(self, source: Arg, destination: Arg, src: str, dest: str) -> bytes | None:
        return cast(bytes | None, self.execute_command("LMOVE", source, destination, src, dest))

    def blmove(
        self, source: Arg, destination: Arg, timeout: float, src: str, dest: str
    ) -> bytes | None:
        """LMOVE that waits up to timeout seconds (a fraction too: Redis 6+) for an item."""
        reply = self.execute_command("BLMOVE", source, destination, src, dest, timeout)
        return cast(bytes | None, reply)

    def config_get(self, name: str) -> dict[str, str]:
        """One setting (Redis before 7 takes one name per CONFIG GET); {} if unknown."""
        flat = self.execute_command("CONFIG", "GET", name) or []
        return {
            flat[i].decode(): flat[i + 1].decode("utf-8", "replace")
            for i in range(0, len(flat) - 1, 2)
        }

    def config_set(self, name: str, value: Arg) -> None:
        self.execute_command("CONFIG", "SET", name, value)


class Redis(Commands):
    """A client that connects lazily and again after a failure (see the module's rules)."""

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self.settings = settings or Settings(**options)
        self.connection = Connection(self.settings)

    def execute_command(self, *args: Arg) -> Reply:
        return self.ready().call(args)

    def ready(self) -> Connection:
        """The connection, checked and (re)connected, retrying what cannot have run."""
        attempt = 0
        while True:
            try:
                self._check()
                return self.connection
            except ConnectionFailed:
                self.connection.close()
                if attempt >= self.settings.retries:
                    raise
                time.sleep(min(0.5, 0.05 * 2**attempt))
                attempt += 1

    def _check(self) -> None:
        con = self.connection
        if con.connected and con.is_stale():
            con.close()
        if not con.connected:
            con.connect()
        elif (
            self.settings.health_check_interval
            and time.monotonic() - con.last_used > self.settings.health_check_interval
            and con.call(("PING",)) != b"PONG"
        ):
            con.close()
            raise ConnectionFailed("no PONG to the health check")

    def close(self) -> None:
        self.connection.close()

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self, transaction)

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    def pubsub(self) -> PubSub:
        return PubSub(self.settings)

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[bytes]:
        cursor: Arg = 0
        while True:
            args: list[Arg] = ["SCAN", cursor]
            if match is not None:
                args += ["MATCH", match]
            if count is not None:
                args += ["COUNT", count]
            cursor, names = self.execute_command(*args)
            yield from names
            if cursor == b"0":
                return


class Pipeline(Commands):
    """Commands sent together; with transaction, in MULTI/EXEC, so they run as one."""

    def __init__(self, client: Redis, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self.commands: list[tuple[Arg, ...]] = []
        self.scripts: dict[str, str] = {}  # SHA1: source, of the scripts queued

    def execute_command(self, *args: Arg) -> Reply:
        self.commands.append(args)
        return None  # the reply comes from execute()

    def execute(self) -> list[Reply]:
        """Every command's reply, in order; the first error answer raises."""
        commands, self.commands = self.commands, []
        scripts, self.scripts = self.scripts, {}
        if not commands:
            return []
        for source in scripts.values():  # so that EVALSHA finds them, each in one round trip
            self.client.execute_command("SCRIPT", "LOAD", source)
        if self.transaction:
            commands = [("MULTI",), *commands, ("EXEC",)]
        con = self.client.ready()
        con.send(b"".join(pack(args) for args in commands))
        replies = [con.parse(wait=True) for _ in commands]
        if self.transaction:
            queued = replies[1:-1]
            results = replies[-1]
            if isinstance(results, Loading):
                raise results
            if results is None or isinstance(results, RedisError):
                error = next((r for r in queued if isinstance(r, RedisError)), results)
                raise ResponseError(f"transaction aborted: {error}")
            replies = results
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies


class Script:
    """A Lua script, sent once and then run by its SHA1 (loaded again when the server lost
    it, after a restart; a pipeline loads its scripts before it runs)."""

    def __init__(self, client: Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(
        self,
        keys: Sequence[Arg] = (),
        args: Sequence[Arg] = (),
        client: Commands | None = None,
    ) -> Reply:
        target = client or self.client
        run = ("EVALSHA", self.sha, len(keys), *keys, *args)
        if isinstance(target, Pipeline):
            target.scripts[self.sha] = self.source
            return target.execute_command(*run)
        try:
            return target.execute_command(*run)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # not run: the server does not know the script
        target.execute_command("SCRIPT", "LOAD", self.source)
        return target.execute_command(*run)


@dataclass(frozen=True)
class Message:
    channel: bytes
    data: bytes


class PubSub:
    """A connection of its own in subscribed mode: messages of the channels subscribed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection = Connection(settings)
        self.channels: list[str] = []

    @property
    def subscribed(self) -> bool:
        return bool(self.channels)

    def subscribe(self, *channels: str) -> None:
        """Subscribe; the server's confirmations are skipped by get_message."""
        if not self.connection.connected:
            self.connection.connect()
        self.connection.send(pack(["SUBSCRIBE", *channels]))
        self.channels += channels

    def get_message(self, timeout: float) -> Message | None:
        """The next message, if one comes within timeout seconds. A connection lost raises:
        the caller subscribes anew (and sweeps for what it missed)."""
        con = self.connection
        if not con.connected:
            raise ConnectionFailed("not subscribed (the connection was lost)")
        interval = self.settings.health_check_interval
        if interval and time.monotonic() - con.last_used > interval:
            con.send(pack(["PING"]))  # its answer, a "pong" message, is skipped below
        deadline = time.monotonic() + timeout
        while True:
            reply = con.read_within(max(deadline - time.monotonic(), 0.0))
            if isinstance(reply, _Incomplete):
                return None
            if isinstance(reply, RedisError):
                raise reply
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                return Message(reply[1], reply[2])
            # (un)subscribe confirmations and pongs

    def close(self) -> None:
        self.connection.close()
        self.channels = []
