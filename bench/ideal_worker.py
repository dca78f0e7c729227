"""The benchmark's ideal worker, for calibration: the least any worker can do for a pulse.

It hears each SET (keyspace notification) and takes the key with GETDEL, nothing else: no
validation, no queue, no database. Its key-clear latency on a given Redis is the floor that
energy-worker's is compared with.

    python bench/ideal_worker.py PORT
"""

from __future__ import annotations

import signal
import sys

import redis


def main() -> int:
    port = int(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    r = redis.Redis(host="127.0.0.1", port=port)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("__keyevent@0__:set")
    for message in pubsub.listen():
        key = message["data"]
        if key.startswith(b"channel:"):
            r.getdel(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
