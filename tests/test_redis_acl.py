"""The Redis users docker-compose.yaml ships (redis-db/users.acl, loaded by redis-db/start.sh), on a
real redis-server started exactly as redis-db starts it: nobody gets in without a password; the
webhook may read and write the input contract's keys and nothing else; energy-worker may do
its work, and cannot flush, reconfigure or shut the server down."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from energy_worker.adapters import work_queue
from energy_worker.adapters.config import RedisSettings
from energy_worker.adapters.redis_client import connect_redis, never_retry
from energy_worker.programs.router import Router
from helpers import REPO, wait_until

START = REPO / "redis-db" / "start.sh"
WORKER_PW = "worker pw with 'quotes' \"and\" $HOME \\ # ; spaces"
WEBHOOK_PW = "webhook-pw-ünïcødé"
# The input contract's keys (docs/DOMAIN.md), in the spellings the contract accepts.
CONTRACT_KEYS = [
    "channel:1:timestamp",
    "Chanel:2:Timestamp",
    "CHANNEL:3:METERCOUNT",
    "channel:4:metercount",
    "powerup",
    "POWERUP",
    "stop",
    "pushtogoogle",
    "debug",
    "foo",
]


def redis_server() -> str:
    found = shutil.which("redis-server")
    assert found, "redis-server is not installed"
    return found


@dataclass
class AclServer:
    port: int
    proc: subprocess.Popen[bytes]
    acl_file: Path

    def client(self, user: str | None, password: str | None) -> redis.Redis:
        # no retry: a refused login is the answer, not something to try ten times over
        return redis.Redis(port=self.port, username=user, password=password, retry=never_retry())

    def worker(self) -> redis.Redis:
        return self.client("energy-worker", WORKER_PW)

    def webhook(self) -> redis.Redis:
        return self.client("webhook", WEBHOOK_PW)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def start_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(redis_server()).parent}:{os.environ['PATH']}",
        "EW_TEST_RUN": os.environ.get("EW_TEST_RUN", ""),
        "REDIS_ACL_DIR": str(tmp_path / "acl"),
        "REDIS_PASSWORD": WORKER_PW,
        "REDIS_WEBHOOK_PASSWORD": WEBHOOK_PW,
        "REDISCLI_AUTH": WEBHOOK_PW,
        **extra,
    }


def start_acl_redis(work: Path) -> AclServer:
    """redis-server started by redis-db/start.sh with the arguments of docker-compose.yaml's
    command, plus a port and folder of its own; stop() it."""
    from conftest import free_port  # noqa: PLC0415 - the run's helper

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["sh", str(START), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
         "--save", "", "--appendonly", "no", "--notify-keyspace-events", "K$n"],
        env=start_env(work), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    acl = AclServer(port, proc, work / "acl" / "users.acl")

    def answers() -> bool:
        try:
            return bool(acl.worker().ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, 15, what="redis-server with the shipped ACL")
    except BaseException:
        acl.stop()
        raise
    return acl


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    acl = start_acl_redis(tmp_path_factory.mktemp("redis-acl"))
    try:
        yield acl
    finally:
        acl.stop()


@pytest.fixture
def fresh(server: AclServer) -> AclServer:
    server.worker().execute_command("SELECT", "0")
    # energy-worker cannot flush (that is one of the points): empty the keyspace key by key
    worker = server.worker()
    for key in worker.scan_iter(count=1000):
        worker.delete(key)
    return server


def refused(call) -> str:
    with pytest.raises(redis.ResponseError) as err:
        call()
    return str(err.value)


def test_nobody_gets_in_without_the_password(server: AclServer):
    with pytest.raises(redis.AuthenticationError):
        server.client(None, None).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client("default", "").ping()
    for user, password in (("webhook", WORKER_PW), ("energy-worker", WEBHOOK_PW), ("x", "y")):
        with pytest.raises(redis.AuthenticationError):
            server.client(user, password).ping()


def test_the_rendered_acl_holds_hashes_not_passwords(server: AclServer):
    text = server.acl_file.read_text()
    assert WORKER_PW not in text and WEBHOOK_PW not in text
    assert hashlib.sha256(WORKER_PW.encode()).hexdigest() in text
    assert hashlib.sha256(WEBHOOK_PW.encode()).hexdigest() in text
    assert server.acl_file.stat().st_mode & 0o077 == 0
    # nor does redis-server keep them in its environment (start.sh execs it without)
    environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
    assert WORKER_PW.encode() not in environ and WEBHOOK_PW.encode() not in environ
    assert b"redis-server" in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()


def test_redis_cli_logs_in_as_the_webhook_with_the_containers_variable(server: AclServer):
    """What the healthcheck and docs/GUIDE.md run inside redis-db."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": WEBHOOK_PW}
    base = [cli, "-p", str(server.port), "--no-auth-warning", "--user", "webhook"]

    def cli_run(*args: str) -> str:
        done = subprocess.run([*base, *args], env=env, capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    assert cli_run("ping").strip() == "PONG"
    assert "NOPERM" in cli_run("FLUSHALL")


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_the_webhook_writes_and_reads_the_contracts_keys(fresh: AclServer, key: str):
    webhook = fresh.webhook()
    assert webhook.set(key, "true", nx=True) is True
    assert webhook.set(key, "true", nx=True) is None  # the webhook's "102 Processing"
    assert webhook.get(key) == b"true"
    assert webhook.exists(key) == 1
    assert fresh.worker().get(key) == b"true"


WEBHOOK_REFUSED = [
    ("SET", work_queue.WORK, "x"),
    ("GET", "energy-worker:seq"),
    ("RPUSH", work_queue.WORK, "{}"),
    ("LRANGE", work_queue.DEADLETTER, "0", "-1"),
    ("DEL", work_queue.WORK),
    ("SET", "somebody-else", "x"),
    ("SET", "channel", "x"),
    ("DEL", "channel:1:timestamp"),
    ("RPUSH", "channel:1:timestamp", "x"),
    ("FLUSHDB",),
    ("FLUSHALL",),
    ("CONFIG", "SET", "notify-keyspace-events", ""),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "dir", "/tmp"),
    ("SAVE",),
    ("BGSAVE",),
    ("SHUTDOWN",),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "webhook", "+@all"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("EVAL", "return redis.call('SET', 'energy-worker:work', 'x')", "0"),
    ("SCRIPT", "LOAD", "return 1"),
    ("PUBLISH", "__keyspace@0__:stop", "set"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("CLIENT", "LIST"),
    ("SLAVEOF", "127.0.0.1", "1"),
    ("MODULE", "LIST"),
]


@pytest.mark.parametrize("command", WEBHOOK_REFUSED, ids=lambda c: " ".join(c)[:40])
def test_the_webhook_may_do_nothing_else(fresh: AclServer, command: tuple[str, ...]):
    fresh.worker().rpush(work_queue.WORK, "item")
    message = refused(lambda: fresh.webhook().execute_command(*command))
    assert message.startswith("NOPERM") or "permission" in message, message
    assert fresh.worker().lrange(work_queue.WORK, 0, -1) == [b"item"]  # untouched


WORKER_REFUSED = [
    ("FLUSHDB",),
    ("FLUSHALL",),
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "SET", "notify-keyspace-events", ""),
    ("SAVE",),
    ("SHUTDOWN",),
    ("ACL", "SETUSER", "webhook", "+@all"),
    ("ACL", "LIST"),
    ("SLAVEOF", "127.0.0.1", "1"),
    ("MODULE", "LIST"),
]


@pytest.mark.parametrize("command", WORKER_REFUSED, ids=lambda c: " ".join(c)[:40])
def test_energy_worker_cannot_flush_reconfigure_or_stop_the_server(
    fresh: AclServer, command: tuple[str, ...]
):
    message = refused(lambda: fresh.worker().execute_command(*command))
    assert message.startswith("NOPERM") or "permission" in message, message
    assert fresh.worker().ping()


def test_energy_worker_does_its_work_with_its_user(fresh: AclServer):
    """Our own client, with the compose settings' user, takes what the webhook writes: the
    router routes it (keyspace notifications, Lua scripts, its own lists), and reads the
    settings it checks."""
    settings = RedisSettings("127.0.0.1", fresh.port, 0, WORKER_PW, "energy-worker")
    client = connect_redis(settings, blocking_timeout=1)
    router = Router(client, 0, frozenset(range(1, 8)), sweep_interval=3600.0)
    try:
        router.run_once(max_wait=0)
        assert router.notifications.working  # compose's flags: no CONFIG SET needed
        webhook = fresh.webhook()
        webhook.set("channel:1:timestamp", "1000", nx=True)
        deadline = time.monotonic() + 10
        while webhook.exists("channel:1:timestamp"):
            assert time.monotonic() < deadline, "the router did not take the key"
            router.run_once(max_wait=0.05)
        (item,) = fresh.worker().lrange(work_queue.WORK, 0, -1)
        assert json.loads(item)["k"] == "t"
        assert client.config_get("appendfsync")  # the durability check reads it
    finally:
        router.close()
        client.close()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"REDIS_PASSWORD": ""}, "REDIS_PASSWORD is not set"),
        ({"REDIS_WEBHOOK_PASSWORD": ""}, "REDIS_WEBHOOK_PASSWORD is not set"),
        ({"REDIS_PASSWORD": "change-me-five"}, "REDIS_PASSWORD is still the placeholder"),
        ({"REDIS_WEBHOOK_PASSWORD": "change-me-six"}, "REDIS_WEBHOOK_PASSWORD is still the"),
        ({"REDIS_WEBHOOK_PASSWORD": WORKER_PW}, "must differ"),
    ],
)
def test_start_refuses_a_missing_or_placeholder_password(tmp_path: Path, extra, named):
    result = subprocess.run(
        ["sh", str(START), "--port", "0"],
        env=start_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "acl" / "users.acl").exists()
