"""`python -m energy_worker.programs.publisher`: the publisher as a supervised program (see
__init__)."""

from __future__ import annotations

import logging

from energy_worker.adapters import config
from energy_worker.programs.publisher import Publisher
from energy_worker.programs.publisher import settings as publisher_settings
from energy_worker.runtime import program

log = logging.getLogger("energy_worker.programs.publisher")


def main(termination: program.Termination) -> int:
    settings = publisher_settings.mqtt_settings()
    pg = config.postgres_settings()
    meters = config.load_meters()
    publisher = Publisher(pg, settings, meters, termination=termination)
    log.info(
        "publisher started (PostgreSQL %s, MQTT broker %s, discovery prefix %s, meters %s)",
        pg.describe(),
        settings.describe(),
        settings.discovery_prefix,
        ", ".join(map(str, meters)),
    )
    try:
        publisher.run()  # until SIGTERM: the publisher has no stop of its own
    finally:
        publisher.close()  # `offline` for every sensor
    return program.EXIT_FAILED


if __name__ == "__main__":
    program.run("publisher", main)
