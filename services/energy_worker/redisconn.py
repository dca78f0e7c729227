"""Redis connections for the processes."""

from __future__ import annotations

import logging

from .config import RedisSettings
from .redisclient import Redis, ResponseError, Settings

# How long after a write Redis may still lose it to a power cut, by its appendfsync setting:
# `always` syncs before it answers; `everysec` syncs once a second from a background thread
# (a sync still running can hold the next one back by up to a second more).
DURABLE_AFTER = {"always": 0.0, "everysec": 2.0}
DURABLE_AFTER_UNKNOWN = 2.0


def connect_redis(settings: RedisSettings, blocking_timeout: float = 0) -> Redis:
    """A client; it connects lazily and reconnects by itself after a lost connection.

    The socket timeout leaves room for our own blocking calls (BLMOVE, pub/sub waits), so a
    silent network failure is noticed without cutting a legitimate wait short. Only what cannot
    have reached the server is retried, a quick two times (a dropped idle connection); a real
    outage is the callers' to handle (outage.Outage), so it is noticed and logged at once.
    """
    return _client(
        settings,
        connect_timeout=5,
        timeout=blocking_timeout + 10,
        keepalive=True,
        health_check_interval=30,
        retries=2,
    )


def connect_once(settings: RedisSettings, timeout: float) -> Redis:
    """A client that tries once per command, for what paces its own attempts (the wait for the
    servers at start) or a person who simply runs a command again (the `energy-worker`
    command)."""
    return _client(settings, connect_timeout=timeout, timeout=timeout)


def _client(
    settings: RedisSettings,
    connect_timeout: float,
    timeout: float,
    keepalive: bool = False,
    health_check_interval: float = 0,
    retries: int = 0,
) -> Redis:
    return Redis(
        Settings(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            username=settings.username,
            password=settings.password,
            connect_timeout=connect_timeout,
            timeout=timeout,
            keepalive=keepalive,
            health_check_interval=health_check_interval,
            retries=retries,
        )
    )


def durable_after(r: Redis, log: logging.Logger) -> float:
    """Seconds after which a write is on Redis's disk, from its persistence settings (a server
    that refuses CONFIG is taken to sync every second, Redis's own default). Said once."""
    try:
        # one name per CONFIG GET: Redis before 7 takes no more
        appendonly = r.config_get("appendonly").get("appendonly") or "no"
        appendfsync = r.config_get("appendfsync").get("appendfsync") or "everysec"
    except ResponseError:
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
