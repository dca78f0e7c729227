"""Bring the servers up to date before the programs start (run by entrypoint.sh): the schema
(its migrations: the only program that changes it; the others only check its version), the
meter config and Grafana's read-only role in PostgreSQL; in Redis, a check that the
database holds no other application's keys (a few stray keys are named, and left to the router
to remove), and that Redis did not lose the numbering of its work items.

PostgreSQL's login in $POSTGRES_INI is the administrator's (POSTGRES_USER). With POSTGRES_OWNER
set, the set-up makes that role (owner_role.py), migrates the schema as it, and writes its login
over the ini: the programs connect as the owner, and the administrator's password is used here
only. Without, the programs use POSTGRES_USER's login as before.

Exit status: 0 done, 1 a server unreachable or failing (or a migration refused: all of it rolled
back), 2 a configuration error, a schema newer than this energy-worker's, or a Redis database
shared with another application (one line says which keys, and what to do).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import redis

from energy_worker.adapters import config, keyspace, owner_role, postgres, readonly_role, schema
from energy_worker.adapters.outage import describe_error
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.adapters.sql import ingest as processor_store
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.adapters.work_queue import Queues
from energy_worker.core.domain import Meter
from energy_worker.runtime import program

log = logging.getLogger("energy_worker.programs.set_up")


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
    if foreign.application() is not None:
        make_run = bool(os.environ.get("ENERGY_WORKER_MAKE_RUN"))  # set by devrun.py
        log.error("%s", foreign.refusal(redis_settings, make_run))
        return program.EXIT_CONFIG
    if foreign.count:
        log.warning("%s", foreign.strays(redis_settings))
    try:
        programs, version = set_up_postgres(settings, meters, Queues(r))
    except (ValueError, postgres.WrongSchema) as exc:  # a schema newer than this code's
        log.error("cannot set up PostgreSQL at %s: %s", settings.describe(), exc)
        return program.EXIT_CONFIG
    except schema.MigrationFailed as exc:  # rolled back: the database is as it was
        log.error(
            "cannot set up PostgreSQL at %s: %s; the schema is as it was", settings.describe(), exc
        )
        return program.EXIT_FAILED
    except postgres.ERRORS as exc:
        log.error("cannot set up PostgreSQL at %s: %s", settings.describe(), describe_error(exc))
        return program.EXIT_FAILED
    log.info(
        "PostgreSQL %s ready: schema version %s, meters %s",
        programs.describe(),
        version,
        ", ".join(str(n) for n in meters),
    )
    return 0


def set_up_postgres(
    settings: config.PostgresSettings, meters: dict[int, Meter], queues: Queues
) -> tuple[config.PostgresSettings, int]:
    """The schema, the meters and the roles, logged in as `settings` (the administrator); returns
    the programs' login (written over postgres.ini when it is the owner's) and the schema's
    version."""
    owner = os.environ.get("POSTGRES_OWNER", "").strip()
    admin = con = None
    try:
        admin = postgres.connect(settings, "energy-worker setup")
        programs = owner_login(admin, settings, owner) if owner else settings
        own = programs is not settings
        # What the programs use is created by their own login, so it is theirs.
        con = postgres.connect(programs, "energy-worker setup") if own else admin
        version = schema.apply(con, meters)
        meter_store.set_silent_after(con, config.meter_silent_after())
        reader = grafana_role(admin, programs.user)
        if own:  # the server is the stack's: its other databases are nobody's of ours
            roles = [programs.user, *([reader] if reader else [])]
            closed = owner_role.close_other_databases(admin, roles)
            log.info("database(s) %s closed to %s", ", ".join(closed), ", ".join(roles))
        redis_sequence(queues, processor_store.load_done(con))
        if own:
            ini = os.environ.get("POSTGRES_INI") or config.DEFAULT_POSTGRES_INI
            config.write_postgres_ini(programs, ini)
        return programs, version
    finally:
        if con is not admin:
            postgres.close_quietly(con)
        postgres.close_quietly(admin)


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


def owner_login(
    admin: postgres.Connection, settings: config.PostgresSettings, owner: str
) -> config.PostgresSettings:
    """The programs' login: the role `owner`, made (again) by the administrator's session, with
    a new password; the administrator's own when it may not make roles (a warning says so)."""
    try:
        password = owner_role.ensure_owner(admin, owner)
    except owner_role.NotSuperuser as exc:
        log.warning(
            "POSTGRES_OWNER %s not made: %s; the programs connect as %s", owner, exc, settings.user
        )
        return settings
    log.info("owner role %s ready: the programs connect as it, not as %s", owner, settings.user)
    return dataclasses.replace(settings, user=owner, password=password)


def grafana_role(con: postgres.Connection, owner: str) -> str | None:
    """Grafana's read-only login, if configured; returns its name. A problem with it is
    Grafana's alone: it is logged, and the pulse path starts all the same."""
    try:
        reader = readonly_role.ensure_from_env(con, owner=owner)
    except (ValueError, *postgres.ERRORS) as exc:
        log.error("Grafana's read-only role was not set up: %s", describe_error(exc))
        return None
    if reader:
        log.info("read-only role %s ready for Grafana", reader)
    return reader


if __name__ == "__main__":
    program.run("setup", main)
