"""Brings a database up to date: sql/schema.sql, then the meter config."""

from __future__ import annotations

import logging
from pathlib import Path

import pg8000.native

from . import store
from .config import REPO_ROOT, Meter

SCHEMA_FILE = REPO_ROOT / "sql" / "schema.sql"
log = logging.getLogger("energy_worker.schema")


def apply(
    con: pg8000.native.Connection, meters: dict[int, Meter], schema: Path = SCHEMA_FILE
) -> int:
    """Apply the schema and the meters in one transaction; returns the schema version.

    An advisory lock keeps two processes starting at once from racing on CREATE statements.
    """
    con.run("BEGIN")
    try:
        con.run("SELECT pg_advisory_xact_lock(hashtext('energy-worker schema'))")
        # pg8000's simple-query path runs a multi-statement script as written.
        con.execute_simple(schema.read_text(encoding="utf-8"))
        store.upsert_meters(con, meters)
        ((version,),) = con.run("SELECT max(version) FROM schema_version")
        con.run("COMMIT")
    except BaseException:
        con.run("ROLLBACK")
        raise
    return int(version)
