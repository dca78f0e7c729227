"""Databases as earlier versions made them (tests/schema_history/), and the catalog of a
database's schema, to compare an upgraded database with a freshly made one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from energy_worker.adapters import postgres, schema
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.core.domain import Meter

HISTORY = Path(__file__).parent / "schema_history"
BASELINE = 10  # the first migration holds version 10 as it shipped (schema_history/README.md)
SHIPPED = {int(p.stem.split("-")[1]): p for p in HISTORY.glob("version-*.sql")}
SHIPPED[BASELINE] = dict(schema.migrations())[BASELINE]
VERSIONS = sorted(SHIPPED)
# The original stack's tables as its dashboards read them: SMALLINT watts, a float kWh.
ORIGINAL_TABLES = (
    "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
    "CREATE TABLE meter_metadata (meter_no smallint, meter_name varchar(50),"
    "  pulse_per_kWh smallint, max_energy smallint, power_factor real, deviation_pct real);"
    "CREATE TABLE meter_status (upper_index integer, meter_no smallint,"
    "  reference_watt_consumption smallint, meter_counts integer, kWh real,"
    "  pulse_time_stamp bigint, pulse_period integer, cor_time_stamp timestamp,"
    "  time_stamp timestamp);"
    "CREATE TABLE consumption (index serial PRIMARY KEY, meter_no smallint,"
    "  watt_consumption smallint, meter_counts integer, kWh real, pulse_time_stamp bigint,"
    "  pulse_period integer, cor_time_stamp timestamp, time_stamp timestamp);"
)


def make_as_shipped(con: postgres.Connection, version: int, meters: Mapping[int, Meter]) -> int:
    """An empty database set up as version `version`'s set-up did: its schema.sql, then the
    meters, whose rows went into the table meter_status (meter_status_stored from version 10
    on; a temporary view of that name stands in for it before)."""
    con.execute_simple("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    return apply_as_shipped(con, meters, SHIPPED[version])


def apply_as_shipped(con: postgres.Connection, meters: Mapping[int, Meter], path: Path) -> int:
    with postgres.transaction(con):
        con.execute_simple(path.read_text(encoding="utf-8"))
        stored = con.run("SELECT to_regclass('meter_status_stored') IS NOT NULL")[0][0]
        if not stored:
            con.run("CREATE TEMPORARY VIEW meter_status_stored AS SELECT * FROM meter_status")
        meter_store.upsert_meters(con, meters)
        if not stored:
            con.run("DROP VIEW meter_status_stored")
        ((version,),) = con.run("SELECT max(version) FROM schema_version")
    return int(version)


# What defines the schema, each row one object's definition as PostgreSQL prints it.
CATALOG = {
    "relations": """
        SELECT c.relname, c.relkind::text, coalesce(array_to_string(c.reloptions, ','), '')
        FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'v', 'm', 'S', 'p', 'f')""",
    "columns": """
        SELECT c.relname, a.attname,
               (row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::int,
               format_type(a.atttypid, a.atttypmod), coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               a.attnotnull
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('r', 'v', 'm', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": """
        SELECT c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = current_schema()::regnamespace""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = current_schema()::regnamespace""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace
          AND c.relkind IN ('v', 'm')""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal""",
    "sequences": """
        SELECT c.relname, format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        WHERE c.relnamespace = current_schema()::regnamespace""",
}

Catalog = dict[str, set[tuple[object, ...]]]


def catalog(con: postgres.Connection) -> Catalog:
    """The schema of the connection's current schema: its relations, their columns (name,
    position among the live ones, type, default, NOT NULL), indexes, constraints, views,
    functions, triggers and sequences, as PostgreSQL prints each."""
    return {part: {tuple(row) for row in con.run(query)} for part, query in CATALOG.items()}


def differences(upgraded: Catalog, fresh: Catalog) -> dict[str, dict[str, list[object]]]:
    """Per part of the catalog, what only the upgraded database has and what only the fresh
    one has; empty when the two are the same."""
    found: dict[str, dict[str, list[object]]] = {}
    for part in CATALOG:
        extra, missing = upgraded[part] - fresh[part], fresh[part] - upgraded[part]
        if extra or missing:
            found[part] = {
                "only upgraded": sorted(extra, key=str),
                "only fresh": sorted(missing, key=str),
            }
    return found
