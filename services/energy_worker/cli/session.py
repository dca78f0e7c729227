"""What every subcommand shares: the settings the service reads (found by themselves under
`make run`), connections that fail with one clear line, and the exit statuses.

Connections are made on first use and their libraries imported only then: a subcommand pays
only for the servers it talks to (redis-py and pg8000 each take a noticeable time to import on a
Raspberry Pi).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from energy_worker.adapters import config
from energy_worker.adapters.config import ConfigError
from energy_worker.cli import make_run
from energy_worker.core import totals
from energy_worker.core.domain import Meter

if TYPE_CHECKING:  # only for the type checker: imported on first use
    import redis

    from energy_worker.adapters.postgres import Connection

EXIT_OK = 0
EXIT_ATTENTION = 1  # done, but the outcome needs attention (status: a problem; push: failed)
EXIT_TROUBLE = 2  # could not do it: a server unreachable, an unknown meter, a wrong argument
APPLICATION_NAME = "energy-worker command"
CONNECT_TIMEOUT = 10.0  # seconds


class CliError(Exception):
    """Ends the command with one line on stderr and the given exit status."""

    def __init__(self, message: str, code: int = EXIT_TROUBLE) -> None:
        super().__init__(message)
        self.code = code


class Session:
    """The command's view of the service: its environment, settings and connections."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        # Under `make run` nothing names the servers: use the run's own settings.
        self.found = make_run.adopt(self.env)
        self._meters: dict[int, Meter] | None = None
        self._redis: redis.Redis | None = None
        self._redis_where = ""
        self._pg: Connection | None = None
        self._pg_where = ""

    # --- settings -----------------------------------------------------------------------

    def hint(self) -> str:
        """Said after a server that does not answer: where its settings came from."""
        if self.found is not None:
            return f" (the servers of `make run`, from {self.found}: is it running?)"
        return ""

    def meters(self) -> dict[int, Meter]:
        """The configured meters, as the service reads them."""
        if self._meters is None:
            try:
                self._meters = config.load_meters(self.env.get("METERS_CONFIG") or None)
            except ConfigError as exc:
                raise CliError(str(exc)) from None
        return self._meters

    def meter(self, number: int) -> Meter:
        meters = self.meters()
        if number not in meters:
            raise CliError(
                f"meter {number} is not configured (configured: "
                f"{', '.join(str(n) for n in meters)}; {self.meters_source()})"
            )
        return meters[number]

    def meters_source(self) -> str:
        explicit = self.env.get("METERS_CONFIG")
        return f"meter config {explicit or config.meters_path()}"

    def tz_name(self) -> str | None:
        return self.env.get("TZ")

    def zone(self) -> ZoneInfo:
        """The service's zone (TZ): its hours and days."""
        try:
            return totals.zone(self.tz_name())
        except ValueError as exc:
            raise CliError(str(exc)) from None

    def run_dir(self) -> Path | None:
        """supervisord's folder (socket, pid file), if this environment names one."""
        value = self.env.get("ENERGY_WORKER_RUN_DIR")
        return Path(value) if value else None

    # --- connections ----------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        """A client of the service's Redis that has answered a PING."""
        if self._redis is None:
            import redis  # noqa: PLC0415 - only the subcommands that need it pay for it

            from energy_worker.adapters.redis_client import connect_once  # noqa: PLC0415

            try:
                settings = config.redis_settings(self.env)
            except ConfigError as exc:
                raise CliError(str(exc)) from None
            self._redis_where = settings.describe()
            # Unlike the programs' (redis_client.py), no retries: a command says at once that
            # Redis does not answer, and a person runs it again.
            client = connect_once(settings, CONNECT_TIMEOUT)
            try:
                client.ping()
            except redis.RedisError as exc:
                client.close()
                raise self.unreachable("Redis", self._redis_where, exc) from None
            self._redis = client
        return self._redis

    def postgres(self) -> Connection:
        """A connection to the service's PostgreSQL database (autocommit)."""
        if self._pg is None:
            from energy_worker.adapters import postgres  # noqa: PLC0415 - only the subcommands that need it pay for it

            try:
                settings = config.postgres_from_env(self.env) or config.postgres_settings(
                    self.env.get("POSTGRES_INI") or None
                )
            except ConfigError as exc:
                raise CliError(f"{exc}{self.ini_hint()}") from None
            self._pg_where = settings.describe()
            try:
                self._pg = postgres.connect(settings, APPLICATION_NAME, CONNECT_TIMEOUT)
            except postgres.ERRORS as exc:
                raise self.unreachable("PostgreSQL", self._pg_where, exc) from None
        return self._pg

    def ini_hint(self) -> str:
        if self.env.get("POSTGRES_INI") or self.env.get("POSTGRES_HOST"):
            return ""
        return (
            " (set POSTGRES_HOST, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB as for the "
            "service, or POSTGRES_INI; or start `make run` in this checkout)"
        )

    def unreachable(self, server: str, where: str, exc: BaseException) -> CliError:
        from energy_worker.adapters.outage import describe_error  # noqa: PLC0415 - light, but only needed here

        return CliError(f"{server} at {where} does not answer: {describe_error(exc)}{self.hint()}")

    def failure(self, exc: BaseException) -> CliError | None:
        """A server error in the middle of a command, as one line (None: not a server's)."""
        from energy_worker.adapters.outage import describe_error  # noqa: PLC0415

        redis_module: Any = sys.modules.get("redis")
        if redis_module is not None and isinstance(exc, redis_module.RedisError):
            return CliError(f"Redis at {self._redis_where} failed: {describe_error(exc)}")
        pg8000: Any = sys.modules.get("pg8000.native")
        if pg8000 is not None and isinstance(exc, pg8000.InterfaceError | pg8000.DatabaseError):
            return CliError(
                f"PostgreSQL at {self._pg_where} failed: {describe_error(exc)}{self.hint()}"
            )
        return None

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._pg is not None:
            from energy_worker.adapters import postgres  # noqa: PLC0415 - already imported when there is a connection

            postgres.close_quietly(self._pg)
            self._pg = None


def confirm(question: str, yes: bool) -> bool:
    """Ask on the terminal (standard input); --yes answers for the person. End of input, or
    anything but y/yes, is a no."""
    if yes:
        return True
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print()
        return False
    if not answer.endswith("\n"):
        print()
    return answer.strip().lower() in ("y", "yes")
