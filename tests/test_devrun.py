"""`make run` (services/energy_worker/devrun.py): embedded servers, the supervised stack, Ctrl-C,
and its data found again by the next run."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

import pytest
import redis
from stack import PROGRAMS, Webhook, all_stored
from supervisor.xmlrpc import SupervisorTransport

from cli_support import cli
from energy_worker import config, devrun
from helpers import REPO, wait_until


def start_devrun(
    var: Path, env: dict[str, str], *, sigint_ignored: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = var / f"devrun-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        # with SIGINT ignored, as a script's `make run &` starts
        ignore = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"] if sigint_ignored else []
        proc = subprocess.Popen(
            [*ignore, sys.executable, "-m", "energy_worker.devrun"],
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
        client = redis.Redis(host="127.0.0.1", port=ports["redis"])
        hook = hook or Webhook(client)
        hook.r = client
        hook.pulses(12)
        all_stored(
            config.PostgresSettings("127.0.0.1", ports["postgres"], "energy", "postgres", ""), hook
        )
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
    for port in (ports["postgres"], ports["redis"]):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return hook


def test_make_run_with_embedded_servers_stops_on_ctrl_c_and_keeps_its_data():
    # A folder the embedded PostgreSQL's own user can reach when the tests run as root
    # (pytest's tmp_path is private to its owner).
    var = Path(tempfile.mkdtemp(prefix="ew-devrun-"))
    var.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS"))}
    env.update(ENERGY_WORKER_VAR=str(var), PYTHONPATH=str(REPO / "services"), COMMIT_INTERVAL="0.5")
    try:
        hook = devrun_round(var, env, None, end="kill")
        # the next `make run` stops what the killed one left, and finds the data again; started
        # with SIGINT ignored, a Ctrl-C of its process group still stops it in order
        hook = devrun_round(var, env, hook, sigint_ignored=True)
        log = "".join(p.read_text() for p in sorted(var.glob("devrun-*.log")))
        assert "stopping a server left over from an earlier run" in log
    finally:
        shutil.rmtree(var, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_a_private_checkout_stops_with_one_line_that_says_what_to_do(tmp_path: Path):
    private = tmp_path / "checkout"  # mode 0700, as `mktemp -d` makes it
    private.mkdir(mode=0o700)
    server = devrun.EmbeddedPostgres(private / "var" / "postgres")
    server.data.mkdir(parents=True)
    entry = pwd.getpwnam(devrun.PG_SYSTEM_USER) if _has_user() else None
    if entry is None:
        subprocess.run(["useradd", "--system", "-M", devrun.PG_SYSTEM_USER], check=True)
        entry = pwd.getpwnam(devrun.PG_SYSTEM_USER)
    server.run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with pytest.raises(SystemExit) as stopped:
        server.check_reachable()
    message = str(stopped.value)
    assert message.count("\n") == 0 and "cannot reach" in message
    assert "run `make run` as a normal user" in message and "chmod o+x" in message
    # (a reachable folder passes: the make run test above runs in one)


def _has_user() -> bool:
    try:
        pwd.getpwnam(devrun.PG_SYSTEM_USER)
    except KeyError:
        return False
    return True
