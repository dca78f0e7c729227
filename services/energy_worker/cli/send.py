"""Writing a key as the webhook does: `SET key value NX`, tried again while the key is still
there (the webhook answers the Arduino "102 Processing" then, and it tries again later)."""

from __future__ import annotations

import time

import redis

RETRY_S = 0.01  # how soon the webhook's client tries again


def send(r: redis.Redis, key: str, value: str, timeout: float) -> bool:
    """SET key value NX until it succeeds; False if the key stayed for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not r.set(key, value, nx=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(RETRY_S)
    return True


def taken(r: redis.Redis, key: str, value: str, timeout: float) -> bool:
    """Wait until the service has taken the key we wrote (it is gone, or holds another value
    written since); False if it is still there after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while r.get(key) == value.encode():
        if time.monotonic() > deadline:
            return False
        time.sleep(RETRY_S)
    return True
