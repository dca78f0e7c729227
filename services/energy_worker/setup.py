"""Bring the servers up to date before the programs start (run by entrypoint.sh): the schema,
the meter config and Grafana's read-only role in PostgreSQL; in Redis, a check that the
database holds nothing of other applications', and that Redis did not lose the numbering of its
work items.

Exit status: 0 done, 1 a server unreachable or failing, 2 a configuration error, or a Redis
database shared with another application (one line says which keys, and what to do).
"""

from __future__ import annotations

import logging

import redis

from . import config, db, keyspace, program, readonly_role, schema
from .outage import describe_error
from .queue import Queues
from .redisconn import connect_redis
from .store import processor as processor_store

log = logging.getLogger("energy_worker.setup")


def main(_termination: program.Termination) -> int:
    settings = config.postgres_settings()
    meters = config.load_meters()
    redis_settings = config.redis_settings()
    r = connect_redis(redis_settings)
    try:
        foreign = keyspace.foreign_keys(r)
    except redis.RedisError as exc:
        log.error("cannot look at Redis %s: %s", redis_settings.describe(), describe_error(exc))
        return program.EXIT_FAILED
    if foreign.count:
        log.error("%s", foreign.refusal(redis_settings))
        return program.EXIT_CONFIG
    con = None
    try:
        con = db.connect(settings, "energy-worker setup")
        version = schema.apply(con, meters)
        grafana_role(con)
        redis_sequence(Queues(r), processor_store.load_done(con))
    except db.ERRORS as exc:
        log.error("cannot set up PostgreSQL at %s: %s", settings.describe(), describe_error(exc))
        return program.EXIT_FAILED
    finally:
        db.close_quietly(con)
    log.info(
        "PostgreSQL %s ready: schema version %s, meters %s",
        settings.describe(),
        version,
        ", ".join(str(n) for n in meters),
    )
    return 0


def redis_sequence(queues: Queues, done: dict[str, int]) -> None:
    """Before the router starts: if Redis lost its last writes (a power cut), its sequence
    number is behind PostgreSQL's and new items must be numbered in a new epoch."""
    try:
        problem = queues.ensure_ahead(done)
    except redis.RedisError as exc:  # the processor checks again
        log.warning("could not compare Redis's sequence number: %s", describe_error(exc))
        return
    if problem:
        log.error("%s", problem)


def grafana_role(con: db.Connection) -> None:
    """Grafana's read-only login, if configured. A problem with it is Grafana's alone: it is
    logged, and the pulse path starts all the same."""
    try:
        reader = readonly_role.ensure_from_env(con)
    except (ValueError, *db.ERRORS) as exc:
        log.error("Grafana's read-only role was not set up: %s", describe_error(exc))
        return
    if reader:
        log.info("read-only role %s ready for Grafana", reader)


if __name__ == "__main__":
    program.run("setup", main)
