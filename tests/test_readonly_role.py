"""The read-only role Grafana reads with (energy_worker.adapters.readonly_role): exactly SELECT
on what the dashboards show, nothing it can write (not even what PostgreSQL grants every role),
while the owner keeps those rights; set up from the environment, idempotently, and with a SCRAM
verifier computed here as PostgreSQL computes it."""

from __future__ import annotations

import base64
import uuid

import pg8000.native
import pytest

import grafana_support as gs
from energy_worker.adapters import config, schema
from energy_worker.adapters.readonly_role import (
    RELATIONS,
    ensure_from_env,
    ensure_readonly_role,
    scram_verifier,
)
from grafana_support import TZ, connect

# The shared fixtures, by name in this module, where pytest looks for them.
pg_module, owner, reader, history = gs.pg_module, gs.owner, gs.reader, gs.history


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO consumption (meter_no, meter_counts, kwh, cor_time_stamp) "
        "VALUES (1, 1, 1, now())",
        "UPDATE meter_status_stored SET kwh = 0",
        "DELETE FROM consumption",
        "UPDATE worker_progress SET backlog = 0",
        "DELETE FROM dead_letters",
        "UPDATE push_outbox SET sent_at = NULL",
        "CREATE TABLE intruder (x int)",
        "CREATE VIEW intruder AS SELECT 1",
        "SELECT nextval('consumption_index_seq')",
        "SELECT * FROM schema_version",
        "TRUNCATE consumption",
        # What PostgreSQL grants every role: temporary tables, large objects (stored in the
        # database), advisory locks (the worker's own).
        "CREATE TEMP TABLE intruder (x int)",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT lo_create(0)",
        "SELECT lo_creat(-1)",
        "SELECT lo_import('/etc/hostname')",
        "SELECT lo_import('/etc/hostname', 0)",
        "SELECT lo_put(0, 0, 'x')",
        "SELECT lowrite(0, 'x')",
        "SELECT pg_advisory_lock(hashtext('energy-worker processor'))",
        "SELECT pg_try_advisory_lock(hashtext('energy-worker processor'))",
        "SELECT pg_advisory_xact_lock(hashtext('energy-worker schema'))",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT pg_advisory_lock_shared(1, 2)",
        "SELECT pg_try_advisory_lock_shared(1)",
        "SELECT pg_advisory_xact_lock_shared(1)",
        "SELECT pg_try_advisory_xact_lock_shared(1, 2)",
    ],
)
def test_reader_cannot_write(pg_module, reader, history, statement):
    con = connect(pg_module, reader)
    try:
        # Even with the session made writable again: its grants alone refuse it.
        con.run("SET default_transaction_read_only = off")
        with pytest.raises(pg8000.native.DatabaseError) as err:
            con.run(statement)
        assert err.value.args[0]["C"] == "42501"  # insufficient_privilege
    finally:
        con.close()


def test_owner_keeps_what_public_lost(pg_module, owner, reader):
    """The processor and the schema set-up take advisory locks as the owner, by a grant of its
    own now that PUBLIC has none."""
    (me,) = owner.run("SELECT current_user")[0]
    rows = owner.run(
        "SELECT p.proname, (SELECT array_agg(coalesce(r.rolname, 'PUBLIC') ORDER BY 1) "
        "FROM aclexplode(p.proacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE a.privilege_type = 'EXECUTE') FROM pg_proc p "
        "WHERE p.pronamespace = 'pg_catalog'::regnamespace "
        "AND (p.proname LIKE 'lo\\_%' OR p.proname = 'lowrite' "
        "OR p.proname LIKE 'pg\\_%advisory\\_%lock%')"
    )
    closed = {
        "lo_create", "lo_creat", "lo_from_bytea", "lo_import", "lo_put", "lowrite",
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    }  # fmt: skip
    assert closed <= {name for name, _ in rows}
    for name, grantees in rows:
        if name in closed:
            assert me in grantees and "PUBLIC" not in grantees, name
        elif "unlock" in name:
            assert grantees is None or "PUBLIC" in grantees, name  # releasing stays open
    ((temp,),) = owner.run(
        "SELECT array_agg(coalesce(r.rolname, 'PUBLIC')) FROM pg_database d, "
        "aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE d.datname = current_database() AND a.privilege_type = 'TEMPORARY'"
    )
    assert me in temp and "PUBLIC" not in temp
    owner.run("CREATE TEMP TABLE owner_may (x int)")
    owner.run("DROP TABLE owner_may")
    assert owner.run("SELECT pg_try_advisory_lock(hashtext('energy-worker processor'))") == [[True]]
    owner.run("SELECT pg_advisory_unlock(hashtext('energy-worker processor'))")


def test_role_set_up_by_a_database_owner_who_is_no_superuser(pg_server, caplog):
    """Only a superuser may take pg_catalog's functions from PUBLIC: without, the set-up says
    what stays open, and still closes the temporary tables of the database it owns."""
    suffix = uuid.uuid4().hex[:8]
    boss, name, user = f"ew_owner_{suffix}", f"ew_test_owner_{suffix}", f"ew_reader_{suffix}"
    admin = connect(pg_server)
    admin.run(f"CREATE ROLE {boss} LOGIN CREATEROLE NOSUPERUSER")
    admin.run(f"CREATE DATABASE {name} OWNER {boss}")
    settings = config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    try:
        con = connect(settings, boss)
        try:
            schema.apply(con, {})
            with caplog.at_level("WARNING", logger="energy_worker.adapters.readonly_role"):
                ensure_readonly_role(con, user, "pw", timezone=TZ)
        finally:
            con.close()
        warned = [r.getMessage() for r in caplog.records]
        assert any("not a superuser" in m and "pg_advisory_lock," in m for m in warned)
        assert not any("temporary tables" in m for m in warned)
        con = connect(settings, user)
        try:
            con.run("SET default_transaction_read_only = off")
            with pytest.raises(pg8000.native.DatabaseError) as err:
                con.run("CREATE TEMP TABLE intruder (x int)")
            assert err.value.args[0]["C"] == "42501"
            con.run("SELECT count(*) FROM meter_overview")
        finally:
            con.close()
    finally:
        admin.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.run(f"DROP ROLE IF EXISTS {user}")
        admin.run(f"DROP ROLE IF EXISTS {boss}")
        admin.close()


def test_reader_sessions_are_read_only_and_local(pg_module, reader):
    con = connect(pg_module, reader)
    try:
        assert con.run("SHOW default_transaction_read_only") == [["on"]]
        assert con.run("SHOW TimeZone") == [[TZ]]
        for name in ("meter_overview", "worker_overview", "meter_last_pulse", "consumption"):
            con.run(f"SELECT * FROM {name} LIMIT 1")
    finally:
        con.close()


def test_role_setup_is_idempotent_and_takes_back_extra_grants(pg_module, owner, reader):
    owner.run(f'GRANT INSERT, DELETE ON consumption TO "{reader}"')
    ensure_readonly_role(owner, reader, "another pw", timezone=TZ)
    rows = owner.run(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = :r",
        r=reader,
    )
    assert {p for _, p in rows} == {"SELECT"}
    assert {t for t, _ in rows} == {r for r in RELATIONS if r in {t for t, _ in rows}}
    assert {"consumption", "meter_overview", "worker_overview"} <= {t for t, _ in rows}
    attrs = owner.run(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = :r",
        r=reader,
    )
    assert attrs == [[False, False, False, True]]


def test_role_from_the_environment(owner):
    assert ensure_from_env(owner, {"GRAFANA_DB_USER": "x"}) is None  # no password: no Grafana
    user = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    env = {"GRAFANA_DB_USER": user, "GRAFANA_DB_PASSWORD": "pw", "TZ": "Europe/Berlin"}
    try:
        assert ensure_from_env(owner, env) == user
        settings = owner.run(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_roles r "
            "ON r.oid = s.setrole WHERE r.rolname = :u",
            u=user,
        )
        assert ["TimeZone=Europe/Berlin"] in settings
        assert ["default_transaction_read_only=on"] in settings
        assert ["jit=off"] in settings  # the dashboards' functions are not compiled per call
        # TZ unset: the pusher's default zone, not the server's
        ensure_from_env(owner, {**env, "TZ": ""})
        settings = owner.run(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_roles r "
            "ON r.oid = s.setrole WHERE r.rolname = :u",
            u=user,
        )
        assert [f"TimeZone={TZ}"] in settings
    finally:
        owner.run(f'DROP OWNED BY "{user}"')
        owner.run(f'DROP ROLE "{user}"')


def test_role_refuses_the_owner_and_empty_passwords(owner):
    (me,) = owner.run("SELECT current_user")[0]
    with pytest.raises(ValueError):
        ensure_readonly_role(owner, me, "pw")
    with pytest.raises(ValueError):
        ensure_readonly_role(owner, "grafana_reader_x", "")


@pytest.mark.parametrize(
    "password", ["plain", "s p a c e s % $HOME # ; = ' \" \\", "ünïcødé\u00a0x"]
)
def test_scram_verifier_is_what_postgresql_stores(owner, password):
    """The server never sees the password; its stored verifier is what it would compute."""
    role = f"ew_scram_{uuid.uuid4().hex[:8]}"
    owner.run("SET password_encryption = 'scram-sha-256'")
    owner.run(f"CREATE ROLE {role} PASSWORD {pg8000.native.literal(password)}")
    try:
        (stored,) = owner.run("SELECT rolpassword FROM pg_authid WHERE rolname = :r", r=role)[0]
    finally:
        owner.run(f"DROP ROLE {role}")
    salt = base64.b64decode(stored.split("$")[1].split(":")[1])
    assert scram_verifier(password, salt) == stored
    assert password not in scram_verifier(password)
