"""Brings a database up to date: sql/schema.sql, then the meter config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import db
from .config import REPO_ROOT
from .domain import Meter
from .store import meters as meter_store

SCHEMA_FILE = REPO_ROOT / "sql" / "schema.sql"


def apply(con: db.Connection, meters: Mapping[int, Meter], schema: Path = SCHEMA_FILE) -> int:
    """Apply the schema and the meters in one transaction; returns the schema version.

    An advisory lock keeps two processes starting at once from racing on CREATE statements.
    """
    with db.transaction(con):
        con.run("SELECT pg_advisory_xact_lock(hashtext('energy-worker schema'))")
        # pg8000's simple-query path runs a multi-statement script as written.
        con.execute_simple(schema.read_text(encoding="utf-8"))
        meter_store.upsert_meters(con, meters)
        ((version,),) = con.run("SELECT max(version) FROM schema_version")
    return int(version)
