"""Redis connections for the processes."""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from .config import RedisSettings

# How long after a write Redis may still lose it to a power cut, by its appendfsync setting:
# `always` syncs before it answers; `everysec` syncs once a second from a background thread
# (a sync still running can hold the next one back by up to a second more).
DURABLE_AFTER = {"always": 0.0, "everysec": 2.0}
DURABLE_AFTER_UNKNOWN = 2.0


def connect_redis(settings: RedisSettings, blocking_timeout: float = 0) -> redis.Redis:
    """A client; it connects lazily and reconnects by itself after a lost connection.

    The socket timeout leaves room for our own blocking calls (BLMOVE, pub/sub waits), so a
    silent network failure is noticed without cutting a legitimate wait short. redis-py's own
    retries are kept to a quick two (a dropped idle connection); a real outage is the callers'
    to handle (outage.Outage), so it is noticed and logged at once, not after redis-py's default
    backoff of many seconds.
    """
    return _client(
        settings,
        socket_connect_timeout=5,
        socket_timeout=blocking_timeout + 10,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def connect_once(settings: RedisSettings, timeout: float) -> redis.Redis:
    """A client that tries once per command, for what paces its own attempts (the wait for the
    servers at start) or a person who simply runs a command again (the `energy-worker`
    command)."""
    return _client(
        settings,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _client(settings: RedisSettings, **options: Any) -> redis.Redis:
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        **options,
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
