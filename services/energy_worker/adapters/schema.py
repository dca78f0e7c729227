"""The schema has one owner, the set-up: apply() runs the numbered migrations
(services/energy_worker/adapters/sql/migrations/<NNNN>_<name>.sql) that a database has not had,
each once and in number order, then writes the meter config. Every other program only checks
the version (check) and waits while it is not the one its code was written for.

The version is the highest row of the table schema_version (0 without it: an empty database or
the original stack's). 0010_baseline.sql is versions 1 to 10 as they shipped, one idempotent
script; every later change is a file of its own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from energy_worker.adapters import postgres
from energy_worker.adapters.outage import describe_error
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.core.domain import Meter

# Package data, found wherever the package is installed.
MIGRATIONS = Path(str(resources.files("energy_worker.adapters.sql").joinpath("migrations")))
NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
LOCK = "energy-worker schema"  # the set-ups' advisory lock: one migrates, the others wait


class MigrationFailed(Exception):
    """A migration PostgreSQL refused or could not finish: nothing of the set-up is kept."""


def migrations(folder: Path = MIGRATIONS) -> list[tuple[int, Path]]:
    """The migrations in `folder`, by number; a .sql file that is not NNNN_name.sql, or two
    files of one number, are a packaging error."""
    found = []
    for path in folder.iterdir():
        if path.suffix != ".sql":
            continue
        match = NAME.fullmatch(path.name)
        if not match:
            raise ValueError(f"migration {path.name}: not named NNNN_name.sql")
        found.append((int(match[1]), path))
    found.sort()
    numbers = [number for number, _ in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two migrations of one number in {folder.name}: {sorted(numbers)}")
    return found


@functools.cache
def latest(folder: Path = MIGRATIONS) -> int:
    """The version this energy-worker's code needs: its highest migration."""
    shipped = migrations(folder)
    return shipped[-1][0] if shipped else 0


def version(con: postgres.Connection) -> int:
    """The database's version: 0 where there is no schema_version (empty, the original's)."""
    ((present,),) = con.run("SELECT to_regclass('schema_version') IS NOT NULL")
    if not present:
        return 0
    ((found,),) = con.run("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(found)


def mismatch(found: int, needed: int) -> str | None:
    """What is wrong with a database of version `found` for code that needs `needed`."""
    if found < needed:
        return f"the schema is version {found}, this energy-worker needs {needed}: run the set-up"
    if found > needed:
        return (
            f"the schema is version {found}, newer than this energy-worker ({needed}): a newer "
            "energy-worker upgraded it; run that one"
        )
    return None


def check(con: postgres.Connection, needed: int | None = None) -> int:
    """The programs' look at the schema, one SELECT or two, no DDL: its version, or
    WrongSchema when it is not `needed` (the shipped migrations' latest)."""
    needed = latest() if needed is None else needed
    found = version(con)
    problem = mismatch(found, needed)
    if problem:
        raise postgres.WrongSchema(problem)
    return found


def apply(con: postgres.Connection, meters: Mapping[int, Meter], folder: Path = MIGRATIONS) -> int:
    """The set-up's step: in one transaction, under an advisory lock (two set-ups at once: the
    second finds the work done), run each migration numbered above the database's version and
    record it, then write the meters; returns the version. A database newer than the
    migrations is refused (WrongSchema), a failing migration rolls everything back
    (MigrationFailed, naming the file)."""
    shipped = migrations(folder)
    newest = shipped[-1][0] if shipped else 0
    with postgres.transaction(con):
        con.run("SELECT pg_advisory_xact_lock(hashtext(:key))", key=LOCK)
        current = version(con)
        if current > newest:
            raise postgres.WrongSchema(mismatch(current, newest))
        for number, path in shipped:
            if number <= current:
                continue
            try:
                # pg8000's simple-query path runs a multi-statement script as written.
                con.execute_simple(path.read_text(encoding="utf-8"))
                con.run(
                    "INSERT INTO schema_version (version) VALUES (:v) ON CONFLICT DO NOTHING",
                    v=number,
                )
            except postgres.ERRORS as exc:
                raise MigrationFailed(f"migration {path.name}: {describe_error(exc)}") from exc
        meter_store.upsert_meters(con, meters)
    return max(current, newest)
