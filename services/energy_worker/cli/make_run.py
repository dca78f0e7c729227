"""What `make run` leaves in var/ so that the `energy-worker` command finds its servers by
itself (`make status`, `.venv/bin/energy-worker status`): the settings the run gave its programs.

devrun.py writes var/make-run.json at every start. The command adopts it for each server its own
environment does not name (PostgreSQL: neither POSTGRES_HOST nor POSTGRES_INI is set; Redis:
neither REDIS_HOST nor REDIS_PORT), as in a shell next to `make run`; a variable set in the
environment still wins over the file's. No secret is written there: the PostgreSQL password is
in the ini that POSTGRES_INI names (mode 0600), the embedded Redis's in the file
REDIS_PASSWORD_FILE names, in var/secrets/ (mode 0600, its folder 0700), where the embedded
servers' passwords are made once (ensure_secret). A REDIS_PASSWORD of a server of your own must
be set for the command as for `make run`.

Pure standard library, so the command pays nothing for it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

FILE_NAME = "make-run.json"
# What the programs of a run read, apart from secrets. Paths are written absolute.
SETTINGS = (
    "POSTGRES_INI",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_USERNAME",
    "REDIS_PASSWORD_FILE",
    "ENERGY_WORKER_RUN_DIR",
    "METERS_CONFIG",
    "TZ",
)
PATHS = ("POSTGRES_INI", "REDIS_PASSWORD_FILE", "ENERGY_WORKER_RUN_DIR", "METERS_CONFIG")
SECRETS = "secrets"
# Any of a server's names in the environment means: that server is named, do not take
# `make run`'s settings of it.
BY_SERVER = {
    ("POSTGRES_INI", "POSTGRES_HOST"): ("POSTGRES_INI",),
    ("REDIS_HOST", "REDIS_PORT"): (
        "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_USERNAME", "REDIS_PASSWORD_FILE"
    ),
}  # fmt: skip
COMMON = ("ENERGY_WORKER_RUN_DIR", "METERS_CONFIG", "TZ")


def var_dir(env: Mapping[str, str]) -> Path:
    """`make run`'s folder: var/ of the checkout, next to the .venv/ make made, whose Python
    runs this (ENERGY_WORKER_VAR moves it; the tests do). The package knows no checkout."""
    return Path(env.get("ENERGY_WORKER_VAR") or Path(sys.prefix).parent / "var").resolve()


def ensure_secret(var: Path, name: str) -> tuple[Path, bool]:
    """var/secrets/<name>-password, made once (hexadecimal: no character needs quoting
    anywhere); True when it was made now, so the server is given it."""
    import secrets  # noqa: PLC0415 - only make run makes one; the command pays nothing for it

    folder = var / SECRETS
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"{name}-password"
    try:
        if path.read_text().strip():
            path.chmod(0o600)
            return path, False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(24))
    return path, True


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
    """Fill `env` with the settings of `make run` in this checkout for each server `env` does
    not name (a run with a PostgreSQL of your own still has its embedded Redis), if the run
    left its file; returns the file's path when it was used."""
    taken = [
        name
        for server, names in BY_SERVER.items()
        if not any(env.get(n) for n in server)
        for name in names
    ]
    if not taken:
        return None
    path = var_dir(env) / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if env.get("REDIS_PASSWORD"):  # exclusive with the file, as in entrypoint.sh
        taken.remove("REDIS_PASSWORD_FILE")
    for name in (*taken, *COMMON):
        value = data.get(name)
        if isinstance(value, str) and value and not env.get(name):
            env[name] = value
    return path
