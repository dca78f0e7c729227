"""Real PostgreSQL and Redis for the tests, each test run in its own database and keyspace.

PostgreSQL: the server at EW_TEST_PG_HOST:EW_TEST_PG_PORT (default 127.0.0.1:5432, trust auth),
or an embedded one (pgserver) when none answers. Each test gets a database of its own, cloned
from a template that already has the schema.
Redis: the server at EW_TEST_REDIS_HOST:EW_TEST_REDIS_PORT (default 127.0.0.1:6379), or a
redis-server started here when none answers. The run claims an empty numbered database and
flushes it before each test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pg8000.native
import pytest
import redis

from energy_worker import config, db, schema
from helpers import REPO, Proc, wait_until, write_ini

CLAIM_KEY = "energy-worker:test-claim"
CLAIM_SECONDS = 6 * 3600  # a crashed run's claim runs out by itself


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[config.PostgresSettings]:
    host = os.environ.get("EW_TEST_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("EW_TEST_PG_PORT", "5432"))
    user = os.environ.get("EW_TEST_PG_USER", "postgres")
    if _reachable(host, port):
        yield config.PostgresSettings(host, port, "postgres", user, "")
        return
    import pgserver  # noqa: PLC0415 - embedded fallback, only without a server

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    sock_dir = server.get_uri().split("host=")[1]
    yield config.PostgresSettings(sock_dir, 5432, "postgres", "postgres", "")
    server.cleanup()


def _admin(settings: config.PostgresSettings) -> pg8000.native.Connection:
    return db.connect(settings, "energy-worker tests")


@pytest.fixture(scope="session")
def pg_template(pg_server: config.PostgresSettings) -> Iterator[str]:
    """A database with the schema and the default meters, to clone per test."""
    name = f"ew_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_server)
    admin.run(f'CREATE DATABASE "{name}"')
    settings = config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    con = db.connect(settings, "energy-worker tests")
    schema.apply(con, config.load_meters(REPO / "etc" / "meters.toml"))
    con.close()
    yield name
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for (leftover,) in admin.run(
        "SELECT datname FROM pg_database WHERE datname LIKE :p", p=f"{name}_%"
    ):
        admin.run(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def pg(pg_server: config.PostgresSettings, pg_template: str) -> Iterator[config.PostgresSettings]:
    """A fresh database of this test's own, with the schema applied."""
    name = f"{pg_template}_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_server)
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def sql(pg: config.PostgresSettings) -> Iterator[pg8000.native.Connection]:
    """A connection to the test's database, for looking at what the processes wrote."""
    con = db.connect(pg, "energy-worker tests")
    yield con
    db.close_quietly(con)


@pytest.fixture
def postgres_ini(pg: config.PostgresSettings, tmp_path: Path) -> Path:
    return write_ini(pg, tmp_path / "postgres.ini")


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    host = os.environ.get("EW_TEST_REDIS_HOST", "127.0.0.1")
    port = int(os.environ.get("EW_TEST_REDIS_PORT", "6379"))
    if _reachable(host, port):
        yield host, port
        return
    binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    port = _free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    wait_until(lambda: _reachable("127.0.0.1", port), 15, what="redis-server to start")
    yield "127.0.0.1", port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_db(redis_server: tuple[str, int]) -> Iterator[config.RedisSettings]:
    """An empty numbered Redis database claimed for this test run."""
    host, port = redis_server
    token = uuid.uuid4().hex
    for number in range(1, 16):
        r = redis.Redis(host=host, port=port, db=number)
        if r.dbsize() == 0 and r.set(CLAIM_KEY, token, nx=True, ex=CLAIM_SECONDS):
            break
        r.close()
    else:
        pytest.fail("no empty Redis database (1-15) to claim for this test run")
    yield config.RedisSettings(host, port, number, None)
    r.flushdb()
    r.close()


@pytest.fixture
def r(redis_db: config.RedisSettings) -> Iterator[redis.Redis]:
    """The run's Redis database, empty at the start of the test."""
    client = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    token = client.get(CLAIM_KEY)
    client.flushdb()
    client.set(CLAIM_KEY, token or b"claimed", ex=CLAIM_SECONDS)
    yield client
    client.close()


# --- the processes ----------------------------------------------------------------------------


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
        METERS_CONFIG=str(REPO / "etc" / "meters.toml"),
        PYTHONPATH=str(REPO / "services"),
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
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
