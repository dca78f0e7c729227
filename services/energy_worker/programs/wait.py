"""Wait until PostgreSQL and Redis answer, before the set-up migrates the schema (entrypoint.sh).

A Raspberry Pi's first start of the PostgreSQL container can take minutes, so the wait is long
by default (POSTGRES_WAIT_SECONDS, 600; REDIS_WAIT_SECONDS, 600) and reports progress every
few seconds. A server on this machine (a loopback address) that refuses the connection outright
for REFUSED_LIMIT seconds is no slow start but a wrong port or a server that is not running:
that ends the wait with one line. Exit status: 0 both answer, 1 gave up at the limit, 2 a
configuration error that waiting cannot fix (unreadable postgres.ini, wrong user or password,
no such database, nothing listening on a local port).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable

import pg8000.native
import redis

from energy_worker.adapters import config, postgres
from energy_worker.adapters.outage import describe_error
from energy_worker.adapters.redis_client import connect_once
from energy_worker.runtime import program

DEFAULT_WAIT_SECONDS = 600.0
log = logging.getLogger("energy_worker.programs.wait")
REPORT_EVERY = 5.0  # seconds between progress lines
ATTEMPT_EVERY = 1.0  # seconds between connection attempts
CONNECT_TIMEOUT = 5.0
# A PostgreSQL starting on this machine listens within seconds (and answers "starting up" while
# it recovers): refusals for this long mean nothing will listen there.
REFUSED_LIMIT = 30.0

# PostgreSQL errors at login that no amount of waiting mends: bad password or role, no database.
FATAL_SQLSTATES = {"28P01": "wrong password", "28000": "no such role", "3D000": "no such database"}


# Redis's answers at login that no amount of waiting mends: no password, no such database (Redis 7
# says "DB index is out of range", Redis 6 "invalid DB index").
REDIS_REFUSALS = ("NOAUTH", "DB index is out of range", "invalid DB index")


class Fatal(Exception):
    """The server answered, and the answer means the configuration is wrong."""


def limit_from_env(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULT_WAIT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise config.ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise config.ConfigError(f"{name} must not be negative")
    return value


def check_postgres(settings: config.PostgresSettings) -> None:
    try:
        conn = postgres.connect(settings, "energy-worker wait", timeout=CONNECT_TIMEOUT)
    except pg8000.native.DatabaseError as exc:
        reason = FATAL_SQLSTATES.get(postgres.sqlstate(exc))
        if reason:
            raise Fatal(f"{reason}: {exc.args[0].get('M', '')}") from None
        raise
    try:
        conn.run("SELECT 1")
    finally:
        conn.close()


def check_redis(settings: config.RedisSettings) -> None:
    client = connect_once(settings, CONNECT_TIMEOUT)  # wait_for paces the attempts
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise Fatal(f"authentication failed: {describe_error(exc)}") from None
    except redis.ResponseError as exc:
        if any(refusal in str(exc) for refusal in REDIS_REFUSALS):
            raise Fatal(describe_error(exc)) from None
        raise
    finally:
        client.close()


def is_local(host: str) -> bool:
    """The host is this machine: every address it resolves to is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def refused(exc: BaseException) -> bool:
    """The connection was refused outright (the clients wrap the socket's error)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def wait_for(
    what: str,
    check: Callable[[], None],
    limit: float,
    log: logging.Logger,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    refused_limit: float | None = None,
    port_setting: str = "the port",
) -> bool:
    """Call check until it succeeds (True) or limit seconds have passed (False). With
    refused_limit, refusals without a break for that long raise Fatal."""
    start = clock()
    next_report = start + REPORT_EVERY
    last = "no attempt yet"
    refused_since: float | None = None
    while True:
        try:
            check()
        except Fatal:
            raise
        except Exception as exc:  # any failure to answer is worth another attempt
            last = describe_error(exc)
            if refused_limit is not None and refused(exc):
                refused_since = clock() if refused_since is None else refused_since
                if clock() - refused_since >= refused_limit:
                    raise Fatal(
                        f"the connection was refused for {refused_limit:.0f} s: nothing listens "
                        f"on that port of this machine (is {port_setting} right, is the server "
                        "running?)"
                    ) from None
            else:
                refused_since = None
        else:
            if clock() - start >= REPORT_EVERY:
                log.info("%s answers after %.0f s", what, clock() - start)
            return True
        now = clock()
        if now - start >= limit:
            log.error(
                "%s did not answer within %.0f s (last error: %s); giving up", what, limit, last
            )
            return False
        if now >= next_report:
            log.info("waiting for %s: %.0f s of %.0f s (%s)", what, now - start, limit, last)
            next_report = now + REPORT_EVERY
        sleep(min(ATTEMPT_EVERY, max(0.0, limit - (now - start))))


def main(_termination: program.Termination) -> int:
    pg = config.postgres_settings()
    rs = config.redis_settings()
    pg_limit = limit_from_env("POSTGRES_WAIT_SECONDS")
    redis_limit = limit_from_env("REDIS_WAIT_SECONDS")
    targets = (
        (
            f"PostgreSQL at {pg.describe()}",
            lambda: check_postgres(pg),
            pg_limit,
            pg.host,
            "POSTGRES_PORT",
        ),
        (f"Redis at {rs.describe()}", lambda: check_redis(rs), redis_limit, rs.host, "REDIS_PORT"),
    )
    for what, check, limit, host, port_setting in targets:
        refused_limit = REFUSED_LIMIT if is_local(host) else None
        try:
            if not wait_for(
                what, check, limit, log, refused_limit=refused_limit, port_setting=port_setting
            ):
                return program.EXIT_FAILED
        except Fatal as exc:
            log.error("%s refuses us, which waiting will not mend: %s", what, exc)
            return program.EXIT_CONFIG
    return 0


if __name__ == "__main__":
    program.run("wait", main)
