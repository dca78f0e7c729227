"""`python -m energy_worker.pusher`: the pusher as a supervised program (see __init__)."""

from __future__ import annotations

from .. import config, db, program
from ..redisconn import connect_redis
from . import MAX_BLOCK, Pusher


def main(_termination: program.Termination) -> int:
    settings = config.push_settings()
    pg = config.postgres_settings()
    r = connect_redis(config.redis_settings(), blocking_timeout=MAX_BLOCK)
    session = db.LockedSession(lambda name: db.connect(pg, name), "pusher")
    pusher = Pusher(session, r, settings)
    try:
        pusher.run()  # until SIGTERM: the pusher has no stop of its own
    finally:
        pusher.close()
    return program.EXIT_FAILED


if __name__ == "__main__":
    program.run("pusher", main)
