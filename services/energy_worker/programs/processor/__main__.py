"""`python -m energy_worker.programs.processor`: the processor as a supervised program (see
__init__)."""

from __future__ import annotations

import logging
import os

from energy_worker.adapters import config
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.programs.processor import Processor
from energy_worker.runtime import program

log = logging.getLogger("energy_worker.programs.processor")


def main(termination: program.Termination) -> int:
    pg = config.postgres_settings()
    redis_settings = config.redis_settings()
    interval = config.commit_interval(os.environ)
    r = connect_redis(redis_settings)
    processor = Processor(r, pg, termination=termination, commit_interval=interval)
    log.info(
        "processor started (PostgreSQL %s, Redis %s, a commit every %g s)",
        pg.describe(),
        redis_settings.describe(),
        interval,
    )
    if processor.run():
        return program.EXIT_STOPPED
    log.info("SIGTERM: everything routed before it is committed; exiting")
    return program.EXIT_TERMINATED


if __name__ == "__main__":
    program.run("processor", main, deferred_sigterm=True)
