"""Brings a database up to date: services/energy_worker/adapters/sql/schema.sql, then the meter
config."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from energy_worker.adapters import postgres
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.core.domain import Meter

# Package data, found wherever the package is installed.
SCHEMA_FILE = Path(str(resources.files("energy_worker.adapters.sql").joinpath("schema.sql")))


def apply(con: postgres.Connection, meters: Mapping[int, Meter], schema: Path = SCHEMA_FILE) -> int:
    """Apply the schema and the meters in one transaction; returns the schema version.

    An advisory lock keeps two processes starting at once from racing on CREATE statements.
    """
    with postgres.transaction(con):
        con.run("SELECT pg_advisory_xact_lock(hashtext('energy-worker schema'))")
        # pg8000's simple-query path runs a multi-statement script as written.
        con.execute_simple(schema.read_text(encoding="utf-8"))
        meter_store.upsert_meters(con, meters)
        ((version,),) = con.run("SELECT max(version) FROM schema_version")
    return int(version)
