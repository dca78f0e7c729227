"""`python -m energy_worker.programs.pusher`: the pusher as a supervised program (see __init__)."""

from __future__ import annotations

from energy_worker.adapters import config, postgres, schema
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.programs.pusher import MAX_BLOCK, Pusher
from energy_worker.programs.pusher import settings as pusher_settings
from energy_worker.runtime import program


def main(_termination: program.Termination) -> int:
    settings = pusher_settings.push_settings()
    pg = config.postgres_settings()
    r = connect_redis(config.redis_settings(), blocking_timeout=MAX_BLOCK)
    # Checked on each (re)connection: the pusher waits while the schema is another version.
    session = postgres.LockedSession(
        lambda name: postgres.connect(pg, name), "pusher", check=schema.check
    )
    pusher = Pusher(session, r, settings)
    try:
        pusher.run()  # until SIGTERM: the pusher has no stop of its own
    finally:
        pusher.close()
    return program.EXIT_FAILED


if __name__ == "__main__":
    program.run("pusher", main)
