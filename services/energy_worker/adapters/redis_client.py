"""Redis connections for the processes: redis-py, configured for exactly-once.

redis-py's defaults are made for a cache: it retries a failed command up to three times after
reconnecting, whether or not the command had already reached the server. A retried LTRIM or
script could acknowledge items twice and lose pulses, so every client here is made with
`Retry(NoBackoff(), 0)`: a command that may have reached the server is never sent again behind
the caller's back. What redis-py still does by itself is safe: it replaces a pooled connection
the server closed while idle before writing anything on it. An outage (a lost connection, a
timeout, a server still LOADING its data: redis-py's BusyLoadingError is a ConnectionError) is
the callers' to handle (outage.Outage), so it is noticed and logged at once.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import redis
import redis.client
from redis.backoff import NoBackoff
from redis.retry import Retry

from energy_worker.adapters.config import RedisSettings

# How long after a write Redis may still lose it to a power cut, by its appendfsync setting:
# `always` syncs before it answers; `everysec` syncs once a second from a background thread
# (a sync still running can hold the next one back by up to a second more).
DURABLE_AFTER = {"always": 0.0, "everysec": 2.0}
DURABLE_AFTER_UNKNOWN = 2.0

ANSWER_S = 10.0  # how long an answer may take beyond a command's own blocking time
CONNECT_S = 5.0
# A connection idle this long is PINGed before its next command; on a subscription (which has no
# command of its own) the router checks that the PONG came back (check_alive).
HEALTH_CHECK_S = 1  # seconds (redis-py takes whole ones)
# redis-py PINGs a subscription that was quiet for HEALTH_CHECK_S, but does not miss a PONG
# that never comes: a silent partition. A subscription whose PING is unanswered this long after
# it was due is taken for dead.
PONG_TIMEOUT = 3 * HEALTH_CHECK_S
# TCP keep-alive, for a peer that vanished from the network while nothing was sent: Linux's
# default would notice after two hours; this notices within about 20 s.
KEEPALIVE = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2))
    if (option := getattr(socket, name, None)) is not None
}


def never_retry() -> Retry:
    """redis-py's retry policy for our clients: none (see the module's docstring)."""
    return Retry(NoBackoff(), 0)


def connect_redis(settings: RedisSettings, blocking_timeout: float = 0) -> redis.Redis:
    """A client; it connects lazily and reconnects on the next command after a lost connection.

    The socket timeout leaves room for our own blocking calls (BLMOVE), so a silent network
    failure is noticed without cutting a legitimate wait short.
    """
    return _client(
        settings,
        socket_connect_timeout=CONNECT_S,
        socket_timeout=blocking_timeout + ANSWER_S,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
        health_check_interval=HEALTH_CHECK_S,
    )


def connect_once(settings: RedisSettings, timeout: float) -> redis.Redis:
    """A client with short timeouts, for what paces its own attempts (the wait for the servers
    at start) or a person who simply runs a command again (the `energy-worker` command)."""
    return _client(settings, socket_connect_timeout=timeout, socket_timeout=timeout)


def _client(
    settings: RedisSettings,
    socket_connect_timeout: float,
    socket_timeout: float,
    socket_keepalive: bool = False,
    socket_keepalive_options: dict[int, int] | None = None,
    health_check_interval: int = 0,
) -> redis.Redis:
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_connect_timeout=socket_connect_timeout,
        socket_timeout=socket_timeout,
        socket_keepalive=socket_keepalive,
        socket_keepalive_options=socket_keepalive_options,
        health_check_interval=health_check_interval,
        retry=never_retry(),
    )


def as_bytes(value: bytes | str) -> bytes:
    """A reply of our clients (they never decode replies), typed as redis-py cannot."""
    return value if isinstance(value, bytes) else value.encode()


def durable_after(r: redis.Redis, log: logging.Logger) -> float:
    """Seconds after which a write is on Redis's disk, from its persistence settings (a server
    that refuses CONFIG is taken to sync every second, Redis's own default). Said once."""
    try:
        # one name per CONFIG GET: Redis before 7 takes no more
        appendonly = str(r.config_get("appendonly").get("appendonly") or "no")
        appendfsync = str(r.config_get("appendfsync").get("appendfsync") or "everysec")
    except redis.ResponseError:
        log.info("Redis does not show its persistence settings; taking appendfsync everysec")
        return DURABLE_AFTER_UNKNOWN
    if appendonly != "yes":
        # Without an append-only file a power cut leaves Redis empty (or with an old snapshot,
        # which no wait could make safe): no key of a committed pulse comes back from a tail.
        log.warning(
            "Redis keeps no append-only file: a power cut loses every pulse it holds (see "
            "docs/CONTRACT.md, Durability); docker-compose.yaml turns it on"
        )
        return 0.0
    delay = DURABLE_AFTER.get(appendfsync, DURABLE_AFTER_UNKNOWN)
    log.info("Redis appendfsync %s: items are committed once %g s old", appendfsync, delay)
    return delay


def check_alive(pubsub: redis.client.PubSub) -> None:
    """Raise ConnectionError when the subscription's health check went unanswered."""
    connection: Any = pubsub.connection  # redis-py's hint says it is always None
    if (
        connection is not None
        and pubsub.health_check_response_counter > 0
        and time.monotonic() > connection.next_health_check + PONG_TIMEOUT
    ):
        raise redis.ConnectionError(
            f"no answer to a health check within {PONG_TIMEOUT:g} s (a silent partition?)"
        )
