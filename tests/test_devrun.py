"""`make run` (services/energy_worker/devrun.py): embedded servers, the supervised stack, Ctrl-C,
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

import pytest
import redis
from stack import PROGRAMS, Webhook, all_stored
from supervisor.xmlrpc import SupervisorTransport

from cli_support import cli
from energy_worker import config
from helpers import REPO, wait_until


def devrun_round(var: Path, env: dict[str, str], hook: Webhook | None) -> Webhook:
    """One `make run`: wait for its programs, send pulses, find them, then Ctrl-C."""
    log_path = var / f"devrun-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "energy_worker.devrun"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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
        hook = devrun_round(var, env, None)
        devrun_round(var, env, hook)  # the second `make run` finds the first one's data
    finally:
        shutil.rmtree(var, ignore_errors=True)
