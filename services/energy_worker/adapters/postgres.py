"""PostgreSQL plumbing (pg8000: pure Python, so the image needs no compiler): connections,
transactions, the rule that tells an outage from a refused statement, and the lock that lets
only one process of a kind work on a database.

The lock is a session-level advisory lock that expires: its holder runs a statement at least
three times a lease (Lock.keep_alive), and a session that has held it silently for LEASE
seconds, waiting for its client, is taken for dead (a network partition leaves such a session
on the server for hours, until TCP keepalive gives up) and is terminated, which releases the
lock and rolls back whatever it had not committed. So after any partition the work resumes
within LEASE of the network's return, and still only one session ever holds the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

import pg8000.native

from energy_worker.adapters.config import PostgresSettings, seconds
from energy_worker.adapters.outage import Outage


class Connection(Protocol):
    """What we use of a pg8000.native.Connection (pg8000 has no type hints of its own)."""

    row_count: int

    def run(self, sql: str, **params: Any) -> list[list[Any]]: ...
    def execute_simple(self, sql: str) -> Any: ...
    def close(self) -> None: ...


# Every error a database call can raise: a lost connection, or a statement refused.
ERRORS = (pg8000.native.InterfaceError, OSError, pg8000.native.DatabaseError)
# SQLSTATE classes of a lost or refused connection (PostgreSQL, appendix A): 08 connection
# exception, 57 operator intervention (shutdown, restart, our own lock takeover), 53
# insufficient resources.
OUTAGE_CLASSES = ("08", "57", "53")
# SQLSTATE classes of a statement refused for what it carries, which waiting will not change:
# 21 cardinality, 22 data exception, 23 integrity constraint, 42 syntax or access rule, 54 a
# program limit (an index row too large). Not the data's: a missing privilege or a missing
# table, column or function (a database restored without our schema: the set-up's to mend).
DATA_CLASSES = ("21", "22", "23", "42", "54")
NOT_DATA_STATES = ("42501", "42P01", "42703", "42883", "42704")
TIMEOUT = 10.0  # seconds a statement (or a connection attempt) may go unanswered
LEASE = 30.0  # seconds: a holder silent for this long is taken for dead
HEARTBEATS_PER_LEASE = 3  # a holder runs a statement at least this often per lease
LOCK_RETRY = 1.0  # seconds between tries while another process holds the lock
SCHEMA_RETRY = 5.0  # seconds between looks at a schema of another version (WrongSchema)
# Server-side settings of our sessions: the server notices a dead client within about half a
# minute (where TCP can tell), and never keeps a transaction open for an absent one. No JIT:
# the planner's estimates for the schema's set-returning functions (energy_per_period: millions
# of rows guessed for a few) pass jit_above_cost, and compiling then costs 0.5 s on this
# machine for a 4 ms query: seconds on a Pi, for every `status` and every hourly total.
# Sent in the connection's start-up message (pg8000's startup_params), which PostgreSQL takes
# as the session's own settings: no round trip of their own.
SESSION_SETTINGS = {
    "jit": "off",
    "TimeZone": "UTC",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "idle_in_transaction_session_timeout": "60s",
}

log = logging.getLogger("energy_worker.adapters.postgres")


class Waiting(Exception):
    """The server answered, and this program must wait before it works: said once, then
    tried again every `retry` seconds on the same connection (failed)."""

    retry = LOCK_RETRY


class LockHeld(Waiting):
    """Another live process of the same kind holds the lock on this database."""


class WrongSchema(Waiting):
    """The database's schema is not the version this energy-worker's code needs
    (schema.check): the set-up's to mend, not the program's; it looks again now and then."""

    def __init__(self, problem: object) -> None:
        super().__init__(problem)
        # The environment's SCHEMA_RETRY shortens the wait for tests (a bad value: exit 2).
        self.retry = seconds(os.environ, "SCHEMA_RETRY", SCHEMA_RETRY, 0.1, 300)


def connect(
    settings: PostgresSettings, application_name: str, timeout: float = TIMEOUT
) -> Connection:
    # As with libpq, a host that is a directory means the server's unix socket in it.
    socket = settings.host.startswith("/")
    con: Connection = pg8000.native.Connection(
        ssl_context=tls_context(settings),
        user=settings.user,
        password=settings.password or None,
        host=None if socket else settings.host,
        port=settings.port,
        unix_sock=f"{settings.host}/.s.PGSQL.{settings.port}" if socket else None,
        database=settings.database,
        application_name=application_name,
        timeout=timeout,
        tcp_keepalive=True,
        startup_params=SESSION_SETTINGS,
    )
    return con


def tls_context(settings: PostgresSettings) -> ssl.SSLContext | Literal[False]:
    """With tls: a context that requires TLS and verifies the server's certificate and host name
    (pg8000 then refuses a server without TLS instead of falling back). Else False, plain text:
    pg8000's default (None) asks for TLS first and takes it unverified when the server offers
    it, after loading the system's CAs for a check it never makes (33 ms of CPU a connection
    on the 2-core x86 machine of the tests, and about a megabyte a process)."""
    if not settings.tls:
        return False
    return ssl.create_default_context(cafile=settings.ca_file)


def close_quietly(con: Connection | None) -> None:
    if con is None:
        return
    with contextlib.suppress(*ERRORS):
        con.close()


@contextlib.contextmanager
def transaction(con: Connection) -> Iterator[Connection]:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises (a rollback on a lost connection is
    moot: the server rolls back on its own)."""
    con.run("BEGIN")
    try:
        yield con
    except BaseException:
        with contextlib.suppress(*ERRORS):
            con.run("ROLLBACK")
        raise
    con.run("COMMIT")


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a PostgreSQL error, '' for anything else."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(fields.get("C", ""))


def is_outage(exc: BaseException) -> bool:
    """The one rule for every program: a lost connection or a server going away is an outage
    (wait and reconnect quietly); anything else is a statement PostgreSQL refused (say what)."""
    if not isinstance(exc, pg8000.native.DatabaseError):
        return True
    return sqlstate(exc).startswith(OUTAGE_CLASSES)


def refused_for_data(exc: BaseException) -> bool:
    """A statement refused for the data it carries: it will be refused again, so its cause is
    to be isolated (the processor splits its batch), not waited out."""
    state = sqlstate(exc)
    return (
        isinstance(exc, pg8000.native.DatabaseError)
        and state.startswith(DATA_CLASSES)
        and state not in NOT_DATA_STATES
    )


def failed(exc: BaseException, outage: Outage) -> None:
    """Report a database error as the one rule says, and wait before the next attempt. While
    another process holds the lock, the next try comes every LOCK_RETRY seconds: it costs
    one statement on an open connection, and the lock is taken soon after it is free; while the
    schema is not the version the program needs, every SCHEMA_RETRY seconds."""
    if isinstance(exc, Waiting):
        outage.waiting(exc, exc.retry)
    elif is_outage(exc):
        outage.failed(exc)
    else:
        outage.refused(exc)


def lock_key(name: str) -> str:
    return f"energy-worker {name}"


class Lock:
    """The lock of one kind of process ("processor", "pusher") on a database, held by the
    session `con` once take() succeeded."""

    def __init__(self, con: Connection, name: str, lease: float = LEASE) -> None:
        self.con = con
        self.name = name
        self.lease = lease
        self.last_statement = time.monotonic()

    def take(self) -> None:
        """Take the lock, taking it over from a session that has been silent for the lease;
        raises LockHeld while its holder is alive."""
        if self._try():
            return
        holder = self.con.run(
            """SELECT a.pid, extract(epoch FROM now() - a.state_change)::float8,
                      a.application_name, coalesce(host(a.client_addr), 'local'), a.state
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                         SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid::bigint = (hashtext(:key)::bigint >> 32) & 4294967295
                 AND l.objid::bigint = hashtext(:key)::bigint & 4294967295
                 AND l.objsubid = 1 AND a.pid <> pg_backend_pid()""",
            key=lock_key(self.name),
        )
        if not holder:  # released meanwhile
            if self._try():
                return
            raise LockHeld(f"another {self.name} holds the lock on this database")
        pid, silent, app, client, state = holder[0]
        # A statement still running is work, however long (a migration at start can take
        # minutes): only a session waiting for its client is taken for dead.
        if silent is None or silent < self.lease or state == "active":
            raise LockHeld(
                f"another {self.name} is working on this database "
                f"(session {pid} of {app or '?'} from {client})"
            )
        log.warning(
            "the %s lock is held by session %s (%s from %s), silent for %.0f s: taken for dead "
            "(a network partition leaves such sessions behind); terminating it",
            self.name,
            pid,
            app or "?",
            client,
            silent,
        )
        try:
            self.con.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        except pg8000.native.DatabaseError as exc:  # not allowed to: say so, and wait
            raise LockHeld(f"could not terminate session {pid}: {sqlstate(exc)}") from None
        deadline = time.monotonic() + 10
        while not self._try():  # the lock goes when the terminated backend has exited
            if time.monotonic() > deadline:
                raise LockHeld(f"the {self.name} lock of terminated session {pid} is still held")
            time.sleep(0.05)

    def _try(self) -> bool:
        ((got,),) = self.con.run(
            "SELECT pg_try_advisory_lock(hashtext(:key))", key=lock_key(self.name)
        )
        self.last_statement = time.monotonic()
        return bool(got)

    def keep_alive(self) -> None:
        """Show the server this session is alive: a statement at least three times a lease."""
        if time.monotonic() - self.last_statement >= self.lease / HEARTBEATS_PER_LEASE:
            self.con.run("SELECT 1")
            self.last_statement = time.monotonic()

    def touched(self) -> None:
        """The holder has just run statements of its own (they count as a heartbeat)."""
        self.last_statement = time.monotonic()


class LockedSession:
    """A program's connection, opened on first use and holding the lock of its kind
    ("processor", "pusher"): the one place a program connects. `check` looks at each new
    connection before the lock is taken (schema.check: the schema's version), so a program
    that may not work on this database leaves the lock to one that may."""

    def __init__(
        self,
        connect: Callable[[str], Connection],
        name: str,
        lease: float = LEASE,
        check: Callable[[Connection], object] | None = None,
    ) -> None:
        self._connect = connect  # connect(application_name)
        self.name = name
        self.lease = lease
        self._check = check
        self._con: Connection | None = None
        self._lock: Lock | None = None
        self._locked = False
        self._checked = False

    @property
    def is_open(self) -> bool:
        """Connected, and holding the lock."""
        return self._con is not None and self._locked

    def connection(self) -> Connection:
        """The session's connection, checked and holding the lock; raises Waiting (LockHeld,
        WrongSchema: the connection stays open for the next try, which costs the server a
        statement or two) or a connection error."""
        if self._con is None:
            self._con = self._connect(lock_key(self.name))
            self._lock = Lock(self._con, self.name, self.lease)
            self._locked = False
            self._checked = self._check is None
        if not self._checked:
            assert self._check is not None
            self._check(self._con)
            self._checked = True
        if not self._locked:
            assert self._lock is not None
            self._lock.take()
            self._locked = True
        return self._con

    def keep_alive(self) -> None:
        if self._lock is not None:
            self._lock.keep_alive()

    def touched(self) -> None:
        if self._lock is not None:
            self._lock.touched()

    def close(self) -> None:
        """Close the session, releasing the lock first: a backend frees its locks only once it
        has exited, after the close, so a successor would otherwise find the lock still held."""
        if self._con is not None and self._locked:
            with contextlib.suppress(*ERRORS):
                self._con.run("SELECT pg_advisory_unlock(hashtext(:key))", key=lock_key(self.name))
        close_quietly(self._con)
        self._con = self._lock = None
        self._locked = False
