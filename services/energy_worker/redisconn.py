"""Redis connections for the processes."""

from __future__ import annotations

import redis

from .config import RedisSettings


def connect_redis(settings: RedisSettings, blocking_timeout: float = 0) -> redis.Redis:
    """A client; it connects lazily and reconnects by itself after a lost connection.

    The socket timeout leaves room for our own blocking calls (BLMOVE, pub/sub waits), so a
    silent network failure is noticed without cutting a legitimate wait short.
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
    )
