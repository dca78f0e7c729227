"""entrypoint.sh run as the container runs it: the rendered postgres.ini, the messages for
missing or unusable settings, and the wait for PostgreSQL and Redis with its limit."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from energy_worker.adapters import config
from helpers import REPO, wait_until

BIN = Path(sys.executable).parent

HOSTILE_PASSWORDS = [
    "%",
    "100%(here)s%%",
    "$HOME ${HOME} $(touch pwned) `touch pwned`",
    "#not a comment",
    ";also not a comment",
    "a=b=c",
    "'single' \"double\"",
    "back\\slash\\",
    "\\n\\t\\0",
    "  leading and trailing spaces  ",
    " ",
    "æøå Grüße 日本語 🔌",
    "-n",
    "-e \\x41",
    "* ? [a-z] ~",
    "&|<>!{}",
    "\ttab",
    "x" * 1000,
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS", "MQTT"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        POSTGRES_INI=str(tmp_path / "postgres.ini"),
        ENERGY_WORKER_RUN_DIR=str(tmp_path / "run"),
    )
    env.update(settings)
    return env


def entrypoint(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "entrypoint.sh")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def unreachable(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Settings of a PostgreSQL that is not there, waited for 0 s: the run ends right after
    rendering the ini."""
    settings = {
        "POSTGRES_USER": "energy",
        "POSTGRES_PASSWORD": "secret",
        "POSTGRES_DB": "energy",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(closed_port()),
        "POSTGRES_WAIT_SECONDS": "0",
    }
    settings.update(extra)
    return base_env(tmp_path, **settings)


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_password_is_rendered_byte_for_byte(tmp_path: Path, password: str):
    result = entrypoint(unreachable(tmp_path, POSTGRES_PASSWORD=password))
    assert result.returncode == 1, result.stderr  # rendered, then gave up waiting
    ini = tmp_path / "postgres.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    settings = config.postgres_settings(ini)
    assert settings.password == password
    assert (settings.user, settings.database, settings.host) == ("energy", "energy", "127.0.0.1")
    assert password not in result.stdout + result.stderr or password.strip() in ("", "%")
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_password_file_variant_and_other_settings(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_bytes("from a file: % $ # ; = ' \" \\ ø\n".encode())
    env = unreachable(
        tmp_path,
        POSTGRES_PASSWORD="",
        POSTGRES_PASSWORD_FILE=str(secret),
        POSTGRES_USER="user with spaces",
        POSTGRES_DB="db-ø",
    )
    del env["POSTGRES_PASSWORD"]
    result = entrypoint(env)
    assert result.returncode == 1, result.stderr
    settings = config.postgres_settings(tmp_path / "postgres.ini")
    # the trailing newline of the file is not part of the secret, as with the postgres image
    assert settings.password == "from a file: % $ # ; = ' \" \\ ø"
    assert (settings.user, settings.database) == ("user with spaces", "db-ø")
    assert settings.port == int(env["POSTGRES_PORT"])


def test_defaults_for_host_and_port(tmp_path: Path):
    env = unreachable(tmp_path)
    del env["POSTGRES_HOST"], env["POSTGRES_PORT"]
    entrypoint(env)  # postgres-db does not resolve here; only the rendering matters
    settings = config.postgres_settings(tmp_path / "postgres.ini")
    assert (settings.host, settings.port) == ("postgres-db", 5432)


def test_a_rendered_ini_is_rewritten_in_place(tmp_path: Path):
    ini = tmp_path / "postgres.ini"
    ini.write_text("old contents that are longer than the new ones " * 20)
    ini.chmod(0o644)
    entrypoint(unreachable(tmp_path, POSTGRES_PASSWORD="new"))
    assert config.postgres_settings(ini).password == "new"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600


def test_missing_variables_are_named_in_one_message(tmp_path: Path):
    result = entrypoint(base_env(tmp_path, POSTGRES_USER="energy"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "POSTGRES_PASSWORD" in errors[0] and "POSTGRES_DB" in errors[0]
    assert "POSTGRES_USER " not in errors[0]
    assert not (tmp_path / "postgres.ini").exists()


def test_a_variable_and_its_file_variant_exclude_each_other(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    result = entrypoint(unreachable(tmp_path, POSTGRES_PASSWORD_FILE=str(secret)))
    assert result.returncode == 2
    assert "POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" in result.stderr


def test_an_unreadable_secret_file_is_named(tmp_path: Path):
    env = unreachable(tmp_path, POSTGRES_PASSWORD_FILE=str(tmp_path / "missing"))
    del env["POSTGRES_PASSWORD"]
    result = entrypoint(env)
    assert result.returncode == 2
    assert "POSTGRES_PASSWORD_FILE names" in result.stderr and "cannot be read" in result.stderr


@pytest.mark.parametrize("breaker", ["\n", "\r", "\x0b", "\x0c", "\x1e", "\x85", "\u2028"])
def test_a_password_that_cannot_fit_one_line_is_refused(tmp_path: Path, breaker: str):
    result = entrypoint(unreachable(tmp_path, POSTGRES_PASSWORD=f"a{breaker}b"))
    assert result.returncode == 2
    assert "POSTGRES_PASSWORD contains a line break" in result.stderr


def sourced(env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing entrypoint.sh (its functions, nothing run)."""
    return subprocess.run(
        ["bash", "-c", f'source "$1" && {script}', "-", str(REPO / "entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_mqtt_password_may_come_from_a_file(tmp_path: Path):
    secret = tmp_path / "mqtt_password"
    secret.write_bytes("p$ss w\u00f6rd '\" %s\n".encode())
    env = base_env(tmp_path, MQTT_PASSWORD_FILE=str(secret))
    done = sourced(
        env, 'ew_setup_env && printf "%s|%s" "$MQTT_PASSWORD" "${MQTT_PASSWORD_FILE-unset}"'
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "p$ss w\u00f6rd '\" %s|unset"  # the trailing line break dropped
    both = sourced({**env, "MQTT_PASSWORD": "x"}, "ew_setup_env")
    assert both.returncode == 2
    assert "both MQTT_PASSWORD and MQTT_PASSWORD_FILE are set" in both.stderr
    # Unset stays unset (the publisher then logs in without a password).
    done = sourced(base_env(tmp_path), 'ew_setup_env && printf "%s" "${MQTT_PASSWORD-unset}"')
    assert done.stdout == "unset"


@pytest.mark.parametrize("host", ["mosquitto", "", "  "])
def test_the_publisher_is_a_program_only_with_mqtt_host(tmp_path: Path, host: str):
    run_dir = tmp_path / "run"
    (run_dir / "conf.d").mkdir(parents=True)
    (run_dir / "conf.d" / "publisher.conf").write_text("[program:publisher]\n")  # a former run's
    done = sourced(base_env(tmp_path, MQTT_HOST=host), "ew_setup_env && ew_optional_programs")
    assert done.returncode == 0, done.stderr
    included = (run_dir / "conf.d" / "publisher.conf").read_text()
    if host.strip():
        assert included == (REPO / "etc" / "supervisor" / "publisher.conf").read_text()
        assert "the publisher runs" in done.stderr
    else:
        assert not re.search(r"^\[program:", included, re.M), included  # a comment only
    # supervisord.conf includes exactly that directory
    assert (
        "files = %(ENV_ENERGY_WORKER_RUN_DIR)s/conf.d/*.conf"
        in (REPO / "supervisord.conf").read_text()
    )


def test_wait_gives_up_at_its_limit_with_a_clear_message(tmp_path: Path):
    started = time.monotonic()
    result = entrypoint(unreachable(tmp_path, POSTGRES_WAIT_SECONDS="2"))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert 2 <= elapsed < 15
    assert "did not answer within 2 s" in result.stderr and "giving up" in result.stderr
    assert "starting supervisord" not in result.stderr


def test_wait_for_redis_gives_up_too(tmp_path: Path, pg: config.PostgresSettings):
    env = base_env(
        tmp_path,
        POSTGRES_USER=pg.user,
        POSTGRES_PASSWORD="unused",
        POSTGRES_DB=pg.database,
        POSTGRES_HOST=pg.host,
        POSTGRES_PORT=str(pg.port),
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(closed_port()),
        REDIS_WAIT_SECONDS="1",
    )
    result = entrypoint(env)
    assert result.returncode == 1
    assert "Redis at 127.0.0.1:" in result.stderr and "did not answer within 1 s" in result.stderr


def test_a_database_that_does_not_exist_fails_at_once(tmp_path: Path, pg: config.PostgresSettings):
    env = base_env(
        tmp_path,
        POSTGRES_USER=pg.user,
        POSTGRES_PASSWORD="unused",
        POSTGRES_DB=f"{pg.database}_missing",
        POSTGRES_HOST=pg.host,
        POSTGRES_PORT=str(pg.port),
    )
    started = time.monotonic()
    result = entrypoint(env)
    assert result.returncode == 2
    assert time.monotonic() - started < 15  # no 600 s wait for what waiting cannot mend
    assert "no such database" in result.stderr
    assert result.stderr.count(" ERROR ") == 1, result.stderr  # one line says it all


def test_other_commands_run_instead_of_the_service(tmp_path: Path):
    result = subprocess.run(
        [str(REPO / "entrypoint.sh"), "sh", "-c", "echo hello"],
        env=base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "hello\n"
    assert not (tmp_path / "postgres.ini").exists()


# supervisord's part in the exit status, with a stand-in on PATH: it exits 0 on SIGTERM and
# SIGINT, as supervisord does, after a moment (stopping the programs takes one).
FAKE_SUPERVISORD = """\
import os, pathlib, signal, sys, time
run = pathlib.Path(os.environ["ENERGY_WORKER_RUN_DIR"])
mode = os.environ["FAKE_MODE"]
def stop(signum, frame):
    with (run / "fake.log").open("a") as log:
        log.write(f"signal {signum}\\n")
    time.sleep(0.5)
    with (run / "fake.log").open("a") as log:
        log.write("exited\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(run / "fake.pid").write_text(str(os.getpid()))
if mode == "stop":  # what the exit listener does after the stop key
    (run / "stop-requested").write_text("the stop key\\n")
    sys.exit(0)
if mode == "shutdown":  # supervisorctl shutdown: exit 0, no stop key
    sys.exit(0)
if mode == "crash":
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


def run_supervisord_part(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "supervisord"
    fake.write_text(f"#!{sys.executable}\n{FAKE_SUPERVISORD}")
    fake.chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    env = base_env(tmp_path, FAKE_MODE=mode)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.Popen(
        ["bash", "-c", 'source "$1" && ew_run_supervisord', "-", str(REPO / "entrypoint.sh")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def fake_started(tmp_path: Path) -> int:
    pid_file = tmp_path / "run" / "fake.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), 15, 0.01, "fake supervisord")
    return int(pid_file.read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_passed_on_and_ends_non_zero(tmp_path: Path, sig: signal.Signals, status: int):
    # `docker stop` or a Docker daemon going down for a reboot: supervisord exits 0, but the
    # container must not (restart: on-failure would leave it down). A marker of an earlier
    # run's stop does not count.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stop-requested").write_text("stale\n")
    proc = run_supervisord_part(tmp_path, "run")
    fake = fake_started(tmp_path)
    assert not (tmp_path / "run" / "stop-requested").exists()
    proc.send_signal(sig)
    time.sleep(0.1)
    proc.send_signal(sig)  # a second signal while supervisord stops: still waited for
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == status, stderr
    log = (tmp_path / "run" / "fake.log").read_text()
    assert f"signal {int(sig)}" in log and log.endswith("exited\n")  # it finished stopping
    assert gone(fake)
    assert f"supervisord ended on {sig.name} without a stop key; exit {status}" in stderr


@pytest.mark.parametrize(("mode", "status"), [("stop", 0), ("shutdown", 143), ("crash", 3)])
def test_only_the_stop_key_ends_with_zero(tmp_path: Path, mode: str, status: int):
    proc = run_supervisord_part(tmp_path, mode)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == status, stderr


def can_be_pid_1() -> bool:
    """Whether this machine lets us start a process as PID 1 of a new PID namespace (root)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.mark.skipif(not can_be_pid_1(), reason="needs unshare of a PID namespace (root)")
def test_docker_stop_during_the_wait_ends_it_at_once_as_pid_1(tmp_path: Path):
    """In a container the entrypoint is PID 1, which ignores a signal it has no handler for:
    `docker stop` during the (up to 10 minute) wait for PostgreSQL must still end it."""
    env = unreachable(tmp_path, POSTGRES_WAIT_SECONDS="120")
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", str(REPO / "entrypoint.sh")],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    shell: psutil.Process | None = None
    try:
        shell = wait_until(lambda: psutil.Process(outer.pid).children(), 10)[0]
        wait_until(lambda: runs(shell, "energy_worker.programs.wait"), 20, what="the wait to start")
        started = time.monotonic()
        shell.send_signal(signal.SIGTERM)  # what `docker stop` sends to the container's PID 1
        assert outer.wait(10) == 143
        assert time.monotonic() - started < 5
    finally:
        if outer.poll() is None:
            if shell is not None:  # the namespace's PID 1: its end ends all in it
                with contextlib.suppress(psutil.Error):
                    shell.kill()
            outer.kill()
            outer.wait()


def runs(shell: psutil.Process, what: str) -> bool:
    """Whether a child of the shell runs `what` (its short-lived children may be gone, or
    zombies, by the time they are looked at)."""
    for child in shell.children():
        with contextlib.suppress(psutil.Error):
            if what in " ".join(child.cmdline()):
                return True
    return False


PLACEHOLDERS = dict(
    re.findall(
        r"^([A-Z_]+_PASSWORD)='?(change-me[^'\n]*)'?$", (REPO / ".env.example").read_text(), re.M
    )
)


@pytest.mark.parametrize(
    "name", ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_DB_PASSWORD", "MQTT_PASSWORD"]
)
def test_a_placeholder_password_is_refused_with_one_line_naming_it(tmp_path: Path, name: str):
    """.env.example's change-me passwords never start a server on the home network."""
    mqtt = {"MQTT_HOST": "mosquitto"} if name == "MQTT_PASSWORD" else {}
    result = entrypoint(unreachable(tmp_path, **{name: PLACEHOLDERS[name]}, **mqtt))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and name in errors[0], result.stderr
    assert "placeholder" in errors[0]
    assert not (tmp_path / "postgres.ini").exists()  # nothing was started


def test_every_placeholder_is_named_in_the_one_line(tmp_path: Path):
    names = ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_DB_PASSWORD", "MQTT_PASSWORD"]
    placeholders = {n: PLACEHOLDERS[n] for n in names}
    result = entrypoint(unreachable(tmp_path, MQTT_HOST="mosquitto", **placeholders))
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert all(name in error for name in names)
    # MQTT's placeholder is harmless while nothing is published (.env.example as shipped)
    result = entrypoint(unreachable(tmp_path, MQTT_HOST="", **placeholders))
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert "MQTT_PASSWORD" not in error and "REDIS_PASSWORD" in error
