"""Bring PostgreSQL up to date before the processes start: schema, meter config, Grafana's
read-only role; and check that Redis did not lose the numbering of its work items.

Run by entrypoint.sh (`python -m energy_worker.setup`); the processor does the same at start.
Exit status: 0 done, 1 database unreachable or failing, 2 configuration error.
"""

from __future__ import annotations

import logging
import sys

import pg8000.native
import redis

from . import config, db, logs, readonly_role, schema, store
from .queue import Queues
from .redisconn import connect_redis
from .retry import describe_error


def main() -> int:
    log = logs.setup("setup")
    try:
        settings = config.postgres_settings()
        meters = config.load_meters()
    except config.ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    con = None
    try:
        con = db.connect(settings, "energy-worker setup")
        version = schema.apply(con, meters)
        grafana_role(con, log)
        redis_sequence(store.load_done(con), log)
    except db.UNAVAILABLE as exc:
        log.error("cannot set up PostgreSQL at %s: %s", settings.describe(), describe_error(exc))
        return 1
    finally:
        db.close_quietly(con)
    log.info(
        "PostgreSQL %s ready: schema version %s, meters %s",
        settings.describe(),
        version,
        ", ".join(str(n) for n in meters),
    )
    return 0


def redis_sequence(done: dict[str, int], log: logging.Logger) -> None:
    """Before the router starts: if Redis lost its last writes (a power cut), its sequence
    number is behind PostgreSQL's and new items must be numbered in a new epoch."""
    try:
        problem = Queues(connect_redis(config.redis_settings())).ensure_ahead(done)
    except (redis.RedisError, config.ConfigError) as exc:  # the processor checks again
        log.warning("could not compare Redis's sequence number: %s", describe_error(exc))
        return
    if problem:
        log.error("%s", problem)


def grafana_role(con: pg8000.native.Connection, log: logging.Logger) -> None:
    """Grafana's read-only login, if configured. A problem with it is Grafana's alone: it is
    logged, and the pulse path starts all the same."""
    try:
        reader = readonly_role.ensure_from_env(con)
    except (ValueError, *db.UNAVAILABLE) as exc:
        log.error("Grafana's read-only role was not set up: %s", describe_error(exc))
        return
    if reader:
        log.info("read-only role %s ready for Grafana", reader)


if __name__ == "__main__":
    sys.exit(main())
