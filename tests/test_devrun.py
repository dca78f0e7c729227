"""`make run` (devtools/devrun.py): embedded servers, the supervised stack, Ctrl-C,
and its data found again by the next run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

import pg8000.native
import psutil
import pytest
import redis
from stack import PROGRAMS, Webhook, all_stored
from supervisor.xmlrpc import SupervisorTransport

import devrun
from cli_support import cli
from energy_worker.adapters import config
from energy_worker.adapters.redis_client import never_retry
from energy_worker.cli import make_run
from helpers import REPO, wait_until


def start_devrun(
    var: Path, env: dict[str, str], *, sigint_ignored: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = var / f"devrun-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        # with SIGINT ignored, as a script's `make run &` starts
        ignore = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"] if sigint_ignored else []
        proc = subprocess.Popen(
            [*ignore, sys.executable, "devtools/devrun.py"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log_path


def devrun_round(
    var: Path,
    env: dict[str, str],
    hook: Webhook | None,
    *,
    end: str = "ctrl-c",
    sigint_ignored: bool = False,
) -> Webhook:
    """One `make run`: wait for its programs, send pulses, find them, then end it: Ctrl-C; or
    (kill) a second `make run`, which must leave this one alone, then kill -9 of the whole
    terminal's process group, which leaves the servers (sessions of their own) behind."""
    proc, log_path = start_devrun(var, env, sigint_ignored=sigint_ignored)

    def running() -> bool:
        assert proc.poll() is None, log_path.read_text()
        # a fresh proxy each time: one whose request failed cannot send another
        transport = SupervisorTransport("", "", f"unix://{var}/run/supervisor.sock")
        rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport).supervisor
        try:
            info: list[dict[str, str]] = rpc.getAllProcessInfo()  # type: ignore[assignment]
            states = {p["name"]: p["statename"] for p in info}
        except (OSError, xmlrpc.client.Fault):
            return False
        return all(states.get(p) == "RUNNING" for p in PROGRAMS)

    try:
        wait_until(running, 90, 0.1, "make run's programs RUNNING")
        ports = json.loads((var / "ports.json").read_text())
        redis_settings, pg_settings = found_by_themselves(var)
        assert (redis_settings.port, pg_settings.port) == (ports["redis"], ports["postgres"])
        owner_only(var, redis_settings, pg_settings)
        # `make redis-cli` while it runs: its Redis, with its password
        done = subprocess.run(
            [sys.executable, "devtools/devrun.py", "redis-cli", "PING"],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert done.stdout.strip() == "PONG"
        client = redis.Redis(
            host=redis_settings.host, port=redis_settings.port, password=redis_settings.password
        )
        hook = hook or Webhook(client)
        hook.r = client
        hook.pulses(12)
        all_stored(pg_settings, hook)
        client.close()
        # `make status`: the command finds this run's servers by itself (var/make-run.json)
        status = cli(env, "status", "--json")
        assert status.code == 0, status
        data = json.loads(status.out)
        assert sum(m["pulses_today"] for m in data["meters"]) >= 12
        assert set(data["pipeline"]["programs"].values()) <= {"RUNNING", "STARTING"}
        if end == "kill":
            second, second_log = start_devrun(var, env)
            assert second.wait(30) == 1
            assert "another `make run`" in second_log.read_text()
            assert running()  # undisturbed
            os.killpg(proc.pid, signal.SIGKILL)  # a crashed terminal: its servers stay
            proc.wait(10)
            return hook
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        # the entrypoint exits 130 after SIGINT; make run's Ctrl-C is no error for make
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert "embedded PostgreSQL stopped" in text and "embedded Redis stopped" in text
    assert "Traceback" not in text and " ERROR " not in text, text  # a calm Ctrl-C
    # supervisord says nothing alarming at a normal start and stop, and one line says ready
    assert " CRIT " not in text and " WARN " not in text, text
    assert "exit_listener INFO ready: router, processor, pusher running" in text
    for port in (ports["postgres"], ports["redis"]):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return hook


def found_by_themselves(var: Path) -> tuple[config.RedisSettings, config.PostgresSettings]:
    """The servers and their passwords, found as the `energy-worker` command finds them."""
    env = {"ENERGY_WORKER_VAR": str(var)}
    assert make_run.adopt(env) == var / "make-run.json"
    return config.redis_settings(env), config.postgres_settings(env["POSTGRES_INI"])


def owner_only(var: Path, rs: config.RedisSettings, pg: config.PostgresSettings) -> None:
    """Both servers refuse anyone without the password; it is in files only the owner reads,
    and on no command line."""
    for name in ("postgres", "redis"):
        secret = var / "secrets" / f"{name}-password"
        assert secret.stat().st_mode & 0o777 == 0o600
    assert (var / "secrets").stat().st_mode & 0o777 == 0o700
    assert (var / "postgres.ini").stat().st_mode & 0o777 == 0o600
    with pytest.raises(redis.RedisError, match=r"NOAUTH|Authentication required|authenticated"):
        redis.Redis(host=rs.host, port=rs.port, retry=never_retry()).ping()
    with pytest.raises(pg8000.native.DatabaseError) as refused:
        pg8000.native.Connection(
            user="postgres", host=pg.host, port=pg.port, database="energy", password="guess"
        )
    assert refused.value.args[0]["C"] == "28P01"  # password authentication failed
    password = rs.password
    assert password and len(password) >= 32
    for proc in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(proc.info["cmdline"] or [])


def old_trust_cluster(var: Path) -> None:
    """A data folder as make run made it before it had passwords: --auth=trust."""
    server = devrun.EmbeddedPostgres(var / "postgres")
    server.data.mkdir(mode=0o700)
    server.prepare_user()
    subprocess.run(
        [str(server.bin / "initdb"), "-D", str(server.data), "--auth=trust",
         f"--username={devrun.PG_USER}", "--locale=C"],
        check=True, capture_output=True, **server.run_as,
    )  # fmt: skip


def test_make_run_with_embedded_servers_stops_on_ctrl_c_and_keeps_its_data():
    # A folder the embedded PostgreSQL's own user can reach when the tests run as root
    # (pytest's tmp_path is private to its owner).
    var = Path(tempfile.mkdtemp(prefix="ew-devrun-"))
    var.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
    env.update(ENERGY_WORKER_VAR=str(var), PYTHONPATH=str(REPO / "services"), COMMIT_INTERVAL="0.5")
    # .env as compose reads it: single quotes keep a value literally, the environment wins
    env_file = var / "dot.env"
    env_file.write_text("TZ='America/New_York' # the programs' zone\nMETERS_CONFIG=${NOWHERE}\n")
    env.update(
        ENERGY_WORKER_ENV_FILE=str(env_file),
        METERS_CONFIG=str(REPO / "services/energy_worker/meters.toml"),
    )
    try:
        old_trust_cluster(var)  # given a password by the first run
        hook = devrun_round(var, env, None, end="kill")
        assert json.loads((var / "make-run.json").read_text())["TZ"] == "America/New_York"
        # the next `make run` stops what the killed one left, and finds the data again; started
        # with SIGINT ignored, a Ctrl-C of its process group still stops it in order
        hook = devrun_round(var, env, hook, sigint_ignored=True)
        log = "".join(p.read_text() for p in sorted(var.glob("devrun-*.log")))
        assert "stopping a server left over from an earlier run" in log
        assert log.count("giving the embedded PostgreSQL its password") == 1
        # the same ports each time (ports.json), though PostgreSQL leaves TIME_WAIT behind
        ports = [
            line.split(" on ")[1].split()[0] for line in log.splitlines() if " on 127." in line
        ]
        assert len(ports) == 4 and ports[0::2] == [ports[0]] * 2 and ports[1::2] == [ports[1]] * 2
    finally:
        shutil.rmtree(var, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_a_private_checkout_stops_with_one_line_that_says_what_to_do(tmp_path: Path):
    private = tmp_path / "checkout"  # mode 0700, as `mktemp -d` makes it
    private.mkdir(mode=0o700)
    server = devrun.EmbeddedPostgres(private / "var" / "postgres")
    server.data.mkdir(parents=True)
    entry = devrun.system_user()
    server.run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with pytest.raises(SystemExit) as stopped:
        server.check_reachable()
    message = str(stopped.value)
    assert message.count("\n") == 0 and "cannot reach" in message
    assert "run `make run` as a normal user" in message and "chmod o+x" in message
    # (a reachable folder passes: the make run test above runs in one)


def test_a_port_whose_server_closed_its_connections_is_taken_again():
    """PostgreSQL closes a session's socket first, so its port holds TIME_WAIT connections
    after it stopped: the next run must still get the same port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: TIME_WAIT on 127.0.0.1:port
    wait_until(lambda: client.recv(1) == b"", 5, 0.01, "the client to see the close")
    client.close()
    server.close()
    assert devrun.free_port(port) == port
    taken = socket.create_server(("127.0.0.1", 0))
    try:  # a port that a server listens on is not free
        assert devrun.free_port(taken.getsockname()[1]) != taken.getsockname()[1]
    finally:
        taken.close()


def test_make_redis_cli_starts_the_embedded_redis_with_its_password_for_one_command(
    tmp_path: Path,
):
    """What the set-up's refusal of foreign keys says to do under make run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
    env.update(ENERGY_WORKER_VAR=str(tmp_path), PYTHONPATH=str(REPO / "services"))

    def redis_cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "devtools/devrun.py", "redis-cli", *args],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    assert redis_cli("SET", "app:leftover", "x") == "OK"
    assert redis_cli("DEL", "app:leftover") == "1"  # the data of the run before it
    assert (tmp_path / "secrets" / "redis-password").stat().st_mode & 0o777 == 0o600
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]


def test_redis_publish_puts_the_embedded_redis_where_the_webhook_reaches_it(tmp_path: Path):
    port = devrun.free_port(None)
    server = devrun.EmbeddedRedis(tmp_path / "redis")
    try:
        server.start(None, "s3cret", f"127.0.0.1:{port}")
        assert (server.bind, server.port) == ("127.0.0.1", port)
        assert redis.Redis(host="127.0.0.1", port=port, password="s3cret").ping()
        with pytest.raises(redis.RedisError):  # published only with its password
            redis.Redis(host="127.0.0.1", port=port, retry=never_retry()).ping()
        again = devrun.EmbeddedRedis(tmp_path / "other")
        with pytest.raises(SystemExit, match=f"REDIS_PUBLISH=127.0.0.1:{port}: that port is taken"):
            again.start(None, "x", f"127.0.0.1:{port}")
    finally:
        server.stop(signal.SIGTERM)
    everywhere = devrun.EmbeddedRedis(tmp_path / "x")
    everywhere.bind = "0.0.0.0"
    assert everywhere.host == "127.0.0.1"  # where the programs reach it
    assert devrun.publish_address("6380") == ("0.0.0.0", 6380)
    assert devrun.publish_address("[::1]:6380") == ("::1", 6380)
    with pytest.raises(SystemExit, match="host-ip:port"):
        devrun.publish_address("192.168.1.5")


def test_a_new_embedded_postgres_has_its_password_before_it_listens():
    var = Path(tempfile.mkdtemp(prefix="ew-devrun-"))  # reachable by the server's user as root
    var.chmod(0o711)
    server = devrun.EmbeddedPostgres(var / "postgres")
    try:
        server.start(None, "s3cret0", new_password=True)
        assert (var / "postgres" / "pg_hba.conf").read_text() == devrun.HBA
        pg8000.native.Connection(
            user="postgres", password="s3cret0", host="127.0.0.1", port=server.port
        ).close()
        with pytest.raises(pg8000.native.DatabaseError, match="28P01"):
            pg8000.native.Connection(
                user="postgres", password="guess", host="127.0.0.1", port=server.port
            )
    finally:
        server.stop(signal.SIGINT)
        shutil.rmtree(var, ignore_errors=True)
