"""The role energy-worker's programs connect to PostgreSQL as: the owner of its schema, and
nothing more.

The set-up alone logs in as the administrator (POSTGRES_USER, the postgres image's superuser).
With POSTGRES_OWNER set (docker-compose.yaml sets energy_worker: the server is the stack's own)
it makes that role: it may log in and own what it creates, and holds no attribute beyond
(no SUPERUSER, CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS: no COPY ... TO PROGRAM, no reading
of the server's files, no other database). It gets a new random password at every start, sent
as a SCRAM verifier (readonly_role.scram_verifier) and known to the programs only through the
postgres.ini the set-up writes: nobody has to choose, keep or type it. The schema's objects the
administrator owned (an older energy-worker connected as it) become the owner's, so the owner
can run the next migrations (services/energy_worker/adapters/sql/migrations/) on them.

On a server that is the stack's own, the other databases (postgres, template1, ...) are closed
to the owner and the Grafana reader: CONNECT and TEMPORARY are taken from PUBLIC there and given
back to every other role that exists, so these two alone lose them (there they could create
large objects and temporary tables, which PostgreSQL grants every role).
"""

from __future__ import annotations

import json
import re
import secrets

import pg8000.native
from pg8000.native import identifier, literal

from energy_worker.adapters import postgres
from energy_worker.adapters.readonly_role import scram_verifier

# A plain lower-case SQL identifier: no quoting, no surprise in a log line or an ini file.
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Five programs, the set-up and a person's `energy-worker` command, with room for restarts.
CONNECTION_LIMIT = 20
ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
# ALTER <kind> ... OWNER TO, by pg_class.relkind (an owned sequence moves with its table)
RELATION_KINDS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
    "f": "FOREIGN TABLE",
}


class NotSuperuser(Exception):
    """The set-up's login may not create roles or hand over objects."""


def check_name(owner: str) -> str:
    if not NAME.fullmatch(owner):
        raise ValueError(
            f"POSTGRES_OWNER must be a lower-case name of letters, digits and _, not {owner!r}"
        )
    return owner


def ensure_owner(con: pg8000.native.Connection, owner: str) -> str:
    """Create or update the role `owner` (module doc), hand it the current schema's objects
    the current user owns, and return its new password. One transaction; raises NotSuperuser
    when the current user is no superuser, ValueError for an unusable name."""
    check_name(owner)
    ((admin, superuser),) = con.run(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    if not superuser:
        raise NotSuperuser(f"{admin} is no superuser")
    if owner == admin:
        raise ValueError("POSTGRES_OWNER must not be POSTGRES_USER, the administrator")
    password = secrets.token_urlsafe(32)
    role = identifier(owner)
    with postgres.transaction(con):
        # Roles are cluster-wide: serialize concurrent set-ups.
        con.run("SELECT pg_advisory_xact_lock(hashtext('energy-worker owner role'))")
        found = con.run("SELECT rolsuper FROM pg_roles WHERE rolname = :r", r=owner)
        if found and found[0][0]:
            raise ValueError(f"POSTGRES_OWNER {owner} is a superuser; name a role of its own")
        verb = "ALTER" if found else "CREATE"
        con.run(
            f"{verb} ROLE {role} WITH {ATTRIBUTES} CONNECTION LIMIT {CONNECTION_LIMIT} "
            f"PASSWORD {literal(scram_verifier(password))}"
        )
        con.run(f"ALTER ROLE {role} RESET ALL")
        ((database, schema),) = con.run("SELECT current_database(), current_schema()")
        con.run(f"GRANT CONNECT, TEMPORARY ON DATABASE {identifier(database)} TO {role}")
        con.run(f"GRANT USAGE, CREATE ON SCHEMA {identifier(schema)} TO {role}")
        hand_over(con, owner)
    return password


def hand_over(con: pg8000.native.Connection, owner: str) -> None:
    """ALTER ... OWNER TO `owner` for each relation and function of the current schema that the
    current user owns (a sequence owned by a table column moves with its table)."""
    relations = con.run(
        "SELECT c.relkind, format('%I', c.relname) FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
        'AND c.relkind = ANY(CAST(:kinds AS "char"[])) '
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass "
        "AND d.objid = c.oid AND d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass)"
        " ORDER BY 2",
        kinds=list(RELATION_KINDS),
    )
    for kind, name in relations:
        con.run(f"ALTER {RELATION_KINDS[kind]} {name} OWNER TO {identifier(owner)}")
    routines = con.run(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.pronamespace = current_schema()::regnamespace "
        "AND p.prokind IN ('f', 'p') "
        "AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) ORDER BY 1"
    )
    for (signature,) in routines:
        con.run(f"ALTER ROUTINE {signature} OWNER TO {identifier(owner)}")


def close_other_databases(con: pg8000.native.Connection, roles: list[str]) -> list[str]:
    """On a server of the stack's own: every database but the current one closed to `roles`
    (energy-worker's owner and Grafana's reader) alone (module doc); a role made since the last
    start gets its CONNECT there now. Returns the databases' names."""
    databases = [
        name
        for (name,) in con.run(
            "SELECT datname FROM pg_database WHERE datallowconn "
            "AND datname <> current_database() ORDER BY 1"
        )
    ]
    others = [
        name
        for (name,) in con.run(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' "
            "AND rolname NOT IN (SELECT json_array_elements_text(CAST(:roles AS json))) "
            "AND NOT rolsuper ORDER BY 1",
            roles=json.dumps(list(roles)),  # text as JSON: the driver's array leaves `null` bare
        )
    ]
    with postgres.transaction(con):
        for database in databases:
            target = identifier(database)
            con.run(f"REVOKE CONNECT, TEMPORARY ON DATABASE {target} FROM PUBLIC")
            for role in roles:
                con.run(f"REVOKE CONNECT, TEMPORARY ON DATABASE {target} FROM {identifier(role)}")
            for role in others:
                con.run(f"GRANT CONNECT, TEMPORARY ON DATABASE {target} TO {identifier(role)}")
    return databases
