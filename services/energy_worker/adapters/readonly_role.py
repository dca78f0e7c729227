"""The read-only PostgreSQL role Grafana connects as.

Its password comes from the environment, so the role cannot live in a migration
(services/energy_worker/adapters/sql/migrations/); the set-up
step calls ensure_readonly_role() after migrating the schema. The password never reaches the
server in clear: it is sent as a SCRAM-SHA-256 verifier computed here, as psql's \\password
does, so neither a server log of the statement nor an error message can show it.

The role may log in, read what the dashboards show (RELATIONS) and nothing else; its sessions
are read-only by default too, so a grant added by mistake later still cannot write. A session
can turn that default off, so the grants are what counts: PostgreSQL lets every role (PUBLIC)
create temporary tables, create and write large objects (stored in the database: they can fill a
Raspberry Pi's SD card) and take advisory locks (the reader could squat on the locks the worker
takes). Where the set-up may (a superuser, as in docker-compose; the database's owner for the
temporary tables) those are taken from PUBLIC and granted back to the set-up's role, which the
processor and the schema set-up run as; otherwise a warning says what stays open. No grant can
keep a role from changing its own password or its own session defaults (ALTER ROLE itself):
the set-up puts both back at every start. At most CONNECTION_LIMIT sessions at once; on a server
of the stack's own no other database (owner_role.close_other_databases).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping

import pg8000.native
from pg8000.native import identifier, literal
from scramp.utils import ScramException, saslprep

from energy_worker.adapters import postgres
from energy_worker.core import totals

# What the dashboards read: the tables behind the views and functions of the schema's Grafana
# section (functions run with the caller's rights), those views, and the pusher's totals once
# its tables exist. A name that does not exist (yet) is skipped.
RELATIONS = (
    "meter_metadata",
    "meter_status",
    "consumption",
    "worker_progress",
    "meter_last_pulse",
    "meter_overview",
    "worker_overview",
    "meter_daily_totals",
    "meter_totals",
    "meter_hourly_totals",
    "push_outbox",
    "dead_letters",
    "reading_corrections",
    "meter_silence",
    "push_overview",
    "pipeline_lag",
)
DEFAULT_USER = "grafana_reader"
# Functions PUBLIC may call that write all the same: large objects (in the database) and
# advisory locks. pg_catalog.<name> for every signature of these names.
WRITING_FUNCTIONS = ("lo_create", "lo_creat", "lo_from_bytea", "lo_import", "lo_put", "lowrite")
ADVISORY_LOCKS = r"^pg_(try_)?advisory_(xact_)?lock(_shared)?$"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
STATEMENT_TIMEOUT = "30s"  # a dashboard over years of history must not hog a Raspberry Pi
# Grafana's data source opens at most 4 (grafana/provisioning/datasources): room for a person's
# psql, no more for a flood of logins.
CONNECTION_LIMIT = 8

log = logging.getLogger("energy_worker.adapters.readonly_role")


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for this password."""
    try:
        normalized = saslprep(password).encode()
    except ScramException:
        # PostgreSQL uses the raw bytes when SASLprep refuses the password; so do we.
        normalized = password.encode()
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", normalized, salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ensure_readonly_role(
    con: pg8000.native.Connection,
    user: str,
    password: str,
    timezone: str | None = None,
    owner: str | None = None,
) -> None:
    """Create or update the read-only role `user`, with exactly SELECT on RELATIONS.

    Idempotent; one transaction. `timezone` (e.g. the TZ of the stack) becomes the role's
    TimeZone, so the dashboards' hours and days are local ones. `owner` is the role the programs
    connect as, which keeps what PUBLIC loses (default: the current user).
    """
    if not user:
        raise ValueError("the read-only role needs a name")
    if not password:
        raise ValueError("the read-only role needs a password")
    if owner is None:
        (owner,) = con.run("SELECT current_user")[0]
    if user == owner:
        raise ValueError("the read-only role must not be the schema's owner")
    role = identifier(user)
    with postgres.transaction(con):
        # Roles are cluster-wide: serialize concurrent set-ups of this database.
        con.run("SELECT pg_advisory_xact_lock(hashtext('energy-worker readonly role'))")
        exists = con.run("SELECT 1 FROM pg_roles WHERE rolname = :u", u=user)
        verb = "ALTER" if exists else "CREATE"
        attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
        con.run(
            f"{verb} ROLE {role} WITH {attrs} CONNECTION LIMIT {CONNECTION_LIMIT} "
            f"PASSWORD {literal(scram_verifier(password))}"
        )
        # PostgreSQL lets every role change its own password and session defaults: whatever
        # the reader changed is put back here, at every start.
        con.run(f"ALTER ROLE {role} RESET ALL")
        con.run(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        con.run(f"ALTER ROLE {role} SET statement_timeout = {literal(STATEMENT_TIMEOUT)}")
        # The dashboards call energy_per_period and power_series: JIT would compile each call
        # (adapters/postgres.py, SESSION_SETTINGS).
        con.run(f"ALTER ROLE {role} SET jit = off")
        if timezone:
            con.run(f"ALTER ROLE {role} SET TimeZone = {literal(timezone)}")
        else:
            con.run(f"ALTER ROLE {role} RESET TimeZone")
        (database, schema) = con.run("SELECT current_database(), current_schema()")[0]
        con.run(f"GRANT CONNECT ON DATABASE {identifier(database)} TO {role}")
        con.run(f"GRANT USAGE ON SCHEMA {identifier(schema)} TO {role}")
        # Exactly what it shows: take back anything granted before, then grant SELECT.
        con.run(f"REVOKE ALL ON ALL TABLES IN SCHEMA {identifier(schema)} FROM {role}")
        con.run(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {identifier(schema)} FROM {role}")
        for name in RELATIONS:
            if con.run("SELECT to_regclass(:n) IS NOT NULL", n=name)[0][0]:
                con.run(f"GRANT SELECT ON {identifier(name)} TO {role}")
        # PostgreSQL before 15 lets every role create tables in schema public. Close that where
        # we own the schema (from 15 on it is already the default).
        can_revoke = con.run(
            "SELECT pg_has_role(nspowner, 'USAGE') OR "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "FROM pg_namespace WHERE nspname = current_schema()"
        )[0][0]
        if can_revoke:
            con.run(f"REVOKE CREATE ON SCHEMA {identifier(schema)} FROM PUBLIC")
        close_public_writes(con, owner, database)


def close_public_writes(con: pg8000.native.Connection, owner: str, database: str) -> None:
    """Take from PUBLIC what lets any role write in a read-only session (module docstring), as
    far as `owner` (the current user) may; `owner` keeps each right by a grant of its own."""
    if con.run(
        "SELECT pg_has_role(datdba, 'USAGE') FROM pg_database WHERE datname = current_database()"
    )[0][0]:
        con.run(f"REVOKE TEMPORARY ON DATABASE {identifier(database)} FROM PUBLIC")
        con.run(f"GRANT TEMPORARY ON DATABASE {identifier(database)} TO {identifier(owner)}")
    else:
        log.warning(
            "not the owner of database %s: every role, the Grafana reader too, may still "
            "create temporary tables in it",
            database,
        )
    functions = con.run(
        "SELECT format('pg_catalog.%I(%s)', p.proname, "
        "pg_get_function_identity_arguments(p.oid)), p.proname, "
        "pg_has_role(p.proowner, 'USAGE') "
        "FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace "
        "AND (p.proname IN (SELECT json_array_elements_text(CAST(:names AS json))) "
        "OR p.proname ~ :locks) ORDER BY 1",
        names=json.dumps(list(WRITING_FUNCTIONS)),
        locks=ADVISORY_LOCKS,
    )
    skipped: set[str] = set()
    for signature, name, may in functions:
        if may:
            con.run(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC")
            con.run(f"GRANT EXECUTE ON FUNCTION {signature} TO {identifier(owner)}")
        else:
            skipped.add(name)
    if skipped:
        log.warning(
            "not a superuser: every role, the Grafana reader too, may still create large "
            "objects and take advisory locks (%s)",
            ", ".join(sorted(skipped)),
        )


def ensure_from_env(
    con: pg8000.native.Connection,
    environ: Mapping[str, str] = os.environ,
    owner: str | None = None,
) -> str | None:
    """The set-up's hook: with GRAFANA_DB_PASSWORD set, ensure the role GRAFANA_DB_USER (default
    grafana_reader), its TimeZone the pusher's (TZ, unset: the same default as the pusher's), so
    the dashboards' hours and days are the totals'; returns its name, or None when there is no
    password (no Grafana in this deployment). A TZ that names no zone raises ValueError."""
    password = environ.get("GRAFANA_DB_PASSWORD", "")
    if not password:
        return None
    user = environ.get("GRAFANA_DB_USER", "") or DEFAULT_USER
    ensure_readonly_role(
        con, user, password, timezone=totals.zone(environ.get("TZ")).key, owner=owner
    )
    return user
