"""The installed package stands alone: built from the project's own files and installed into a
folder of its own, it runs from another directory, its schema, Lua scripts and default meter
config found as package data (no path into a checkout)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pg8000.native
import pytest
import redis

from helpers import REPO

pytestmark = pytest.mark.processes


def test_the_installed_package_sets_up_a_database_from_any_directory(
    worker_env: dict[str, str], tmp_path: Path, sql: pg8000.native.Connection, r: redis.Redis
):
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "services",
        source / "services",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    shutil.copy(REPO / "pyproject.toml", source)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--target", str(site), str(source)], check=True, timeout=300)
    shutil.rmtree(source)  # nothing of the checkout is left to find
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**worker_env, "PYTHONPATH": str(site)}
    del env["METERS_CONFIG"]  # the package's default meters
    sql.run("TRUNCATE meter_metadata CASCADE")  # the set-up writes them again

    setup = subprocess.run(
        [sys.executable, "-m", "energy_worker.programs.set_up"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "ready: schema version" in setup.stdout + setup.stderr
    assert sql.run("SELECT count(*) FROM meter_metadata") == [[7]]

    # The router's scripts, from the installed package, against the real Redis.
    probe = (
        "import json, energy_worker\n"
        "from energy_worker.adapters import config, redis_client, work_queue\n"
        "queues = work_queue.Queues(redis_client.connect_redis(config.redis_settings()), [1])\n"
        "routed = queues.route(b'channel:1:timestamp')\n"
        "print(json.dumps([energy_worker.__file__, routed.outcome]))\n"
    )
    r.set("channel:1:timestamp", "1000")
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    where, outcome = json.loads(done.stdout)
    assert Path(where).is_relative_to(site) and outcome == "routed"
