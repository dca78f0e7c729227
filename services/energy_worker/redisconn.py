"""Redis connections for the processes."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import RedisSettings


def connect_redis(settings: RedisSettings, blocking_timeout: float = 0) -> redis.Redis:
    """A client; it connects lazily and reconnects by itself after a lost connection.

    The socket timeout leaves room for our own blocking calls (BLMOVE, pub/sub waits), so a
    silent network failure is noticed without cutting a legitimate wait short. redis-py's own
    retries are kept to a quick two (a dropped idle connection); a real outage is the callers'
    to handle (outage.Outage), so it is noticed and logged at once, not after redis-py's default
    backoff of many seconds.
    """
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_connect_timeout=5,
        socket_timeout=blocking_timeout + 10,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def as_bytes(value: bytes | str) -> bytes:
    """A reply of our clients (they never decode replies), typed as redis-py cannot."""
    return value if isinstance(value, bytes) else value.encode()
