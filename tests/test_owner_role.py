"""PostgreSQL least privilege (owner_role.py, setup.py): on a server of the test's own, the
set-up logs in as the administrator, makes the owner role (no superuser) with a new password
that only postgres.ini knows, hands it the schema, and the programs connect as it; the owner and
Grafana's reader cannot reach the server's other databases; the reader has a connection limit
and whatever it changed of its own role is put back at the next start."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest
from private_pg import ADMIN, PrivatePostgres
from redis import Redis

from energy_worker.adapters import config, schema
from energy_worker.adapters.readonly_role import scram_verifier
from helpers import REPO, enqueue, wait_until, write_ini

OWNER, READER = "energy_worker", "grafana_reader"
# the owner and the reader log in with a password (SCRAM); the administrator needs none here
HBA = ["host all all 127.0.0.1/32 scram-sha-256"]


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(hba=HBA)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def database(server: PrivatePostgres) -> Iterator[str]:
    name = f"energy_{uuid.uuid4().hex[:12]}"
    admin = server.connect()
    admin.run(f"CREATE DATABASE {name}")
    admin.close()
    yield name
    admin = server.connect()
    admin.run(f"DROP DATABASE {name} WITH (FORCE)")
    for role in (OWNER, READER):
        if admin.run("SELECT 1 FROM pg_roles WHERE rolname = :r", r=role):
            for (db_name,) in admin.run("SELECT datname FROM pg_database WHERE datallowconn"):
                con = server.connect(db_name)
                con.run(f"DROP OWNED BY {role}")
                con.close()
            admin.run(f"DROP ROLE {role}")
    admin.close()


def set_up(spawn, server: PrivatePostgres, database: str, ini: Path, **env: str):
    write_ini(server.settings(database), ini)
    setup = spawn(
        "setup",
        POSTGRES_INI=str(ini),
        POSTGRES_OWNER=OWNER,
        GRAFANA_DB_USER=READER,
        GRAFANA_DB_PASSWORD="reader pw",
        **env,
    )
    status = setup.wait_exit(60)
    assert status == 0, setup.log()
    return setup


def login(server: PrivatePostgres, settings: config.PostgresSettings, database: str | None = None):
    return pg8000.native.Connection(
        user=settings.user,
        password=str(settings.password),
        host="127.0.0.1",
        port=server.port,
        database=database or settings.database,
        timeout=10,
        ssl_context=False,
    )


def refused(con, statement: str) -> str:
    with pytest.raises(pg8000.native.DatabaseError) as err:
        con.run(statement)
    return str(err.value.args[0]["C"])


def test_the_programs_connect_as_an_owner_that_is_no_superuser(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path, r: Redis
):
    ini = tmp_path / "postgres.ini"
    setup = set_up(spawn, server, database, ini)
    programs = config.postgres_settings(ini)
    # the ini now holds the owner's login, a password of its own, still 0600
    assert programs.user == OWNER and programs.database == database
    assert len(programs.password) >= 32
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert programs.password not in setup.log()
    admin = server.connect(database)
    (attrs,) = admin.run(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
        "rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = :r",
        r=OWNER,
    )
    assert attrs == [False, False, False, False, False, True, 20]
    # it owns every table, view and function of the schema
    owners = admin.run(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = "
        "'public'::regnamespace AND relkind IN ('r', 'v', 'S') UNION SELECT DISTINCT "
        "pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
    )
    assert owners == [[OWNER]]
    admin.close()
    # with the password only the ini knows (SCRAM, verified by the server)
    con = login(server, programs)
    try:
        assert con.run("SELECT current_user") == [[OWNER]]
        assert refused(con, "COPY (SELECT 1) TO PROGRAM 'true'") == "42501"
        assert refused(con, "SELECT pg_read_file('PG_VERSION')") == "42501"
        assert refused(con, "CREATE ROLE intruder") == "42501"
        assert refused(con, "CREATE DATABASE intruder") == "42501"
        assert refused(con, "ALTER ROLE energy_worker SUPERUSER") == "42501"
    finally:
        con.close()
    wrong = config.PostgresSettings("127.0.0.1", server.port, database, OWNER, "guess")
    with pytest.raises(pg8000.native.DatabaseError) as err:
        login(server, wrong)
    assert err.value.args[0]["C"] == "28P01"
    # and a program works as it: a pulse goes in
    processor = spawn("processor", POSTGRES_INI=str(ini))
    enqueue(r, "channel:1:timestamp", "1000")
    enqueue(r, "channel:1:timestamp", "2000")
    con = login(server, programs)
    try:
        wait_until(
            lambda: (
                con.run("SELECT pulses_counted FROM meter_status WHERE meter_no = 1")[0][0] >= 1
            ),
            30,
            0.05,
            "the processor to store a pulse as the owner",
        )
    finally:
        con.close()
        processor.close()


def test_a_database_of_an_older_energy_worker_is_handed_to_the_owner(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path
):
    admin = server.connect(database)
    schema.apply(
        admin, config.load_meters(REPO / "services" / "energy_worker" / "meters.toml")
    )  # as it used to
    admin.run("INSERT INTO dead_letters (key, value, reason, at) VALUES ('k', '', 'kept', now())")
    admin.close()
    ini = tmp_path / "postgres.ini"
    set_up(spawn, server, database, ini)
    con = login(server, config.postgres_settings(ini))
    try:
        assert con.run("SELECT reason FROM dead_letters") == [["kept"]]
        # Later migrations alter these objects, which needs their ownership: the baseline, run
        # again as the owner (its CREATE OR REPLACE, ALTER ...), stands for them.
        con.execute_simple(schema.migrations()[0][1].read_text(encoding="utf-8"))
    finally:
        con.close()
    set_up(spawn, server, database, ini)  # idempotent, and a new password each start
    assert config.postgres_settings(ini).user == OWNER


def test_owner_and_reader_cannot_reach_the_other_databases(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path
):
    ini = tmp_path / "postgres.ini"
    set_up(spawn, server, database, ini)
    programs = config.postgres_settings(ini)
    reader = config.PostgresSettings("127.0.0.1", server.port, database, READER, "reader pw")
    for settings in (programs, reader):
        login(server, settings).close()  # its own database: yes
        for other in ("postgres", "template1"):
            with pytest.raises(pg8000.native.DatabaseError) as err:
                login(server, settings, other)
            assert err.value.args[0]["C"] == "42501", (settings.user, other)
    # everyone else keeps them (a role of another application on the same server)
    admin = server.connect()
    admin.run("CREATE ROLE bystander LOGIN PASSWORD 'pw'")
    admin.close()
    try:
        set_up(spawn, server, database, ini)  # grants are given back to every other role
        by = config.PostgresSettings("127.0.0.1", server.port, "postgres", "bystander", "pw")
        login(server, by).close()
    finally:
        admin = server.connect()
        for (db_name,) in admin.run("SELECT datname FROM pg_database WHERE datallowconn"):
            admin.run(f"REVOKE ALL ON DATABASE {db_name} FROM bystander")
        admin.run("DROP ROLE bystander")
        admin.close()


def test_the_reader_has_a_connection_limit_and_its_changes_are_put_back(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path
):
    ini = tmp_path / "postgres.ini"
    set_up(spawn, server, database, ini)
    reader = config.PostgresSettings("127.0.0.1", server.port, database, READER, "reader pw")
    admin = server.connect(database)
    assert admin.run("SELECT rolconnlimit FROM pg_roles WHERE rolname = :r", r=READER) == [[8]]
    admin.close()
    # PostgreSQL lets any role change its own password and session defaults ...
    con = login(server, reader)
    con.run("SET default_transaction_read_only = off")
    con.run(f"ALTER ROLE {READER} SET default_transaction_read_only = off")
    con.run(f"ALTER ROLE {READER} PASSWORD 'taken over'")
    con.close()
    # ... the next start puts both back
    set_up(spawn, server, database, ini)
    con = login(server, reader)
    try:
        assert con.run("SHOW default_transaction_read_only") == [["on"]]
    finally:
        con.close()
    taken = config.PostgresSettings("127.0.0.1", server.port, database, READER, "taken over")
    with pytest.raises(pg8000.native.DatabaseError):
        login(server, taken)


def test_without_a_superuser_the_programs_keep_the_given_login(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path
):
    admin = server.connect()
    admin.run("CREATE ROLE boss LOGIN PASSWORD 'boss pw' CREATEROLE")
    admin.run(f"ALTER DATABASE {database} OWNER TO boss")
    admin.close()
    con = server.connect(database)
    con.run("GRANT CREATE ON SCHEMA public TO boss")
    con.close()
    ini = tmp_path / "postgres.ini"
    boss = config.PostgresSettings("127.0.0.1", server.port, database, "boss", "boss pw")
    write_ini(boss, ini)
    setup = spawn("setup", POSTGRES_INI=str(ini), POSTGRES_OWNER=OWNER)
    try:
        assert setup.wait_exit(60) == 0, setup.log()
        assert "POSTGRES_OWNER energy_worker not made: boss is no superuser" in setup.log()
        assert config.postgres_settings(ini).user == "boss"
    finally:
        admin = server.connect()
        admin.run(f"ALTER DATABASE {database} OWNER TO {ADMIN}")
        con = server.connect(database)
        con.run("DROP OWNED BY boss")
        con.close()
        admin.run("DROP ROLE boss")
        admin.close()


def test_the_owner_password_is_stored_as_a_verifier_of_the_ini_password(
    spawn, server: PrivatePostgres, database: str, tmp_path: Path
):
    ini = tmp_path / "postgres.ini"
    set_up(spawn, server, database, ini)
    password = str(config.postgres_settings(ini).password)
    admin = server.connect()
    ((stored,),) = admin.run("SELECT rolpassword FROM pg_authid WHERE rolname = :r", r=OWNER)
    admin.close()
    salt = base64.b64decode(stored.split("$")[1].split(":")[1])
    assert scram_verifier(password, salt) == stored
    assert os.environ.get("POSTGRES_OWNER") is None  # the test run itself makes no owner
