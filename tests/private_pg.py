"""A PostgreSQL server of a test's own (the binaries of the pgserver package, as `make run`'s),
for what must not happen on the shared one: server-wide grants, pg_hba.conf, TLS. On
127.0.0.1, a free port; under root it runs as the user pgserver (made if missing), as `make
run`'s does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pg8000.native

from devrun import package_dir, system_user
from energy_worker.adapters import config
from helpers import wait_until

ADMIN = "postgres"


def server_ids() -> tuple[int, int] | None:
    """The uid and gid the server runs as: the user pgserver under root, else this process's."""
    if os.geteuid() != 0:
        return None
    entry = system_user()
    return entry.pw_uid, entry.pw_gid


def binaries() -> Path:
    """pgserver's, found as `make run` finds them (importing the package would set up more)."""
    return package_dir("pgserver") / "pginstall" / "bin"


def system_binaries() -> Path | None:
    """The machine's own PostgreSQL (the one of the shared test server), whose build has TLS,
    which pgserver's lacks; None when there is none."""
    found = shutil.which("postgres")
    if found is None:
        return None
    folder = Path(found).resolve().parent
    return folder if (folder / "initdb").exists() else None


class PrivatePostgres:
    """initdb, pg_hba.conf from `hba` (the superuser `postgres` always gets in without a
    password first), postgres with `options` (-c name=value); stop() removes everything."""

    def __init__(
        self,
        hba: list[str] | None = None,
        options: dict[str, str] | None = None,
        bin_dir: Path | None = None,
    ):
        from conftest import free_port  # noqa: PLC0415 - the run's helper

        # Not under pytest's tmp_path: that is private to root, the server's user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="ew-test-pg-"))
        self.root.chmod(0o711)
        self.data = self.root / "data"
        self.owner = server_ids()
        self.run_as: dict[str, Any] = {}
        if self.owner is not None:
            self.run_as = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        self.data.mkdir(mode=0o700)
        self.give(self.data)
        self.log = self.root / "postgres.log"
        self.bin = bin_dir or binaries()
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
             f"--username={ADMIN}", "--encoding=UTF8", "--locale=C"],
            check=True, capture_output=True, **self.run_as,
        )  # fmt: skip
        lines = [
            f"host all {ADMIN} 127.0.0.1/32 trust",
            *(hba or ["host all all 127.0.0.1/32 trust"]),
        ]
        (self.data / "pg_hba.conf").write_text("".join(f"{line}\n" for line in lines))
        self.port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            **(options or {}),
        }
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}"))],
                stdout=out, stderr=subprocess.STDOUT, **self.run_as,
            )  # fmt: skip
        try:
            wait_until(self.answers, 30, 0.05, "the private PostgreSQL")
        except BaseException:
            self.stop()
            raise

    def give(self, path: Path) -> None:
        """Make `path` the server's user's (under root)."""
        if self.owner is not None:
            os.chown(path, *self.owner)

    def settings(self, database: str = "postgres", user: str = ADMIN) -> config.PostgresSettings:
        return config.PostgresSettings("127.0.0.1", self.port, database, user)

    def connect(self, database: str = "postgres", user: str = ADMIN) -> Any:
        return pg8000.native.Connection(
            user=user,
            host="127.0.0.1",
            port=self.port,
            database=database,
            timeout=10,
            ssl_context=False,  # plain text, as postgres.connect without tls
        )

    def answers(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"postgres exited:\n{self.log.read_text(errors='replace')}")
        try:
            self.connect().close()
        except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError):
            return False
        return True

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM waits for sessions
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
