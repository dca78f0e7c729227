"""`python -m energy_worker.programs.router`: the router as a supervised program (see
__init__)."""

from __future__ import annotations

import logging

import redis

from energy_worker.adapters import config
from energy_worker.adapters.outage import Outage
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.programs.router import Router
from energy_worker.runtime import program

log = logging.getLogger("energy_worker.programs.router")


def main(_termination: program.Termination) -> int:
    settings = config.redis_settings()
    meters = frozenset(config.load_meters())
    r = connect_redis(settings)  # it never blocks: a subscription waits by itself
    router = Router(r, settings.db, meters)
    outage = Outage("Redis", log)
    log.info(
        "router started (Redis %s, meters %s)",
        settings.describe(),
        ", ".join(map(str, sorted(meters))),
    )
    while True:  # every move is atomic, so SIGTERM may end this anywhere
        try:
            if router.run_once():
                return program.EXIT_STOPPED
            outage.succeeded()
        except redis.RedisError as exc:
            router.close()
            outage.failed(exc)


if __name__ == "__main__":
    program.run("router", main)
