"""What `make run` leaves in var/ so that the `energy-worker` command finds its servers by
itself (`make status`, `.venv/bin/energy-worker status`): the settings the run gave its programs.

devrun.py writes var/make-run.json at every start. The command adopts it when its own
environment names no server (neither POSTGRES_INI nor REDIS_HOST nor REDIS_PORT is set), as in a
shell next to `make run`; a variable set in the environment still wins over the file's. No
secret is written: the PostgreSQL password is in the ini that POSTGRES_INI names (mode 0600),
and a REDIS_PASSWORD of a server of your own must be set for the command as for `make run`.

Pure standard library, so the command pays nothing for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FILE_NAME = "make-run.json"
# What the programs of a run read, apart from secrets. Paths are written absolute.
SETTINGS = (
    "POSTGRES_INI",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_USERNAME",
    "ENERGY_WORKER_RUN_DIR",
    "METERS_CONFIG",
    "TZ",
)
PATHS = ("POSTGRES_INI", "ENERGY_WORKER_RUN_DIR", "METERS_CONFIG")
# Any of these in the environment means: the servers are named, do not look for `make run`'s.
SERVERS = ("POSTGRES_INI", "REDIS_HOST", "REDIS_PORT")


def var_dir(env: Mapping[str, str]) -> Path:
    """`make run`'s folder: var/ of the checkout (ENERGY_WORKER_VAR moves it; the tests do)."""
    return Path(env.get("ENERGY_WORKER_VAR") or REPO_ROOT / "var").resolve()


def write(var: Path, env: Mapping[str, str]) -> Path:
    """Record the settings of this run (devrun.py, before it starts the programs)."""
    data = {
        name: os.path.abspath(env[name]) if name in PATHS else env[name]
        for name in SETTINGS
        if env.get(name)
    }
    path = var / FILE_NAME
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)  # a command reading it meanwhile sees the old file or the new one
    return path


def adopt(env: MutableMapping[str, str]) -> Path | None:
    """Fill `env` with the settings of `make run` in this checkout, if `env` names no server
    and the run left its file; returns the file's path when it was used."""
    if any(env.get(name) for name in SERVERS):
        return None
    path = var_dir(env) / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for name in SETTINGS:
        value = data.get(name)
        if isinstance(value, str) and value and not env.get(name):
            env[name] = value
    return path
