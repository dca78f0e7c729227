"""PostgreSQL connections (pg8000: pure Python, so the image needs no compiler)."""

from __future__ import annotations

import contextlib

import pg8000.native

from .config import PostgresSettings

# Errors that mean "the database is not reachable right now": retry, never crash.
UNAVAILABLE = (pg8000.native.InterfaceError, OSError, pg8000.native.DatabaseError)


def connect(
    settings: PostgresSettings, application_name: str, timeout: float = 10
) -> pg8000.native.Connection:
    # As with libpq, a host that is a directory means the server's unix socket in it.
    socket = settings.host.startswith("/")
    con = pg8000.native.Connection(
        user=settings.user,
        password=settings.password or None,
        host=None if socket else settings.host,
        port=settings.port,
        unix_sock=f"{settings.host}/.s.PGSQL.{settings.port}" if socket else None,
        database=settings.database,
        application_name=application_name,
        timeout=timeout,
        tcp_keepalive=True,
    )
    con.run("SET TIME ZONE 'UTC'")
    return con


def close_quietly(con: pg8000.native.Connection | None) -> None:
    if con is None:
        return
    with contextlib.suppress(UNAVAILABLE):
        con.close()


# SQLSTATE classes of a lost or refused connection (PostgreSQL, appendix A): 08 connection
# exception, 57 operator intervention (shutdown, restart), 53 insufficient resources.
CONNECTION_CLASSES = ("08", "57", "53")


def is_connection_error(exc: BaseException) -> bool:
    """A lost connection (retry quietly), rather than a statement PostgreSQL refused."""
    if not isinstance(exc, pg8000.native.DatabaseError):
        return True
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(fields.get("C", "")).startswith(CONNECTION_CLASSES)
