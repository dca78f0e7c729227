"""Where the processes find PostgreSQL, Redis and the meters.

PostgreSQL: an ini file (default /etc/postgres.ini, override with POSTGRES_INI), section
[postgresql] with host, port, database, user, password. It is read by a small parser of our own
because ConfigParser interpolates `%` and strips the edges of values: here a value is everything
after `=` (one space after it is layout, not value), so any printable password survives.

Redis: REDIS_HOST (default redis-db, the compose service), REDIS_PORT, REDIS_DB, REDIS_PASSWORD,
and REDIS_USERNAME for a server with ACL users.

Meters: a TOML file (METERS_CONFIG, else /etc/energy-worker/meters.toml, else the default for
7 meters shipped in etc/meters.toml).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POSTGRES_INI = Path("/etc/postgres.ini")
DEFAULT_METERS_PATHS = (Path("/etc/energy-worker/meters.toml"), REPO_ROOT / "etc" / "meters.toml")
MAX_METERS = 8


class ConfigError(Exception):
    """A configuration file or variable is missing or wrong; the message says which."""


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    database: str
    user: str
    password: str

    def __repr__(self) -> str:  # never show the password, not even in a traceback
        return (
            f"PostgresSettings(host={self.host!r}, port={self.port}, "
            f"database={self.database!r}, user={self.user!r}, password=***)"
        )

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    db: int
    password: str | None
    username: str | None = None  # for servers with ACL users (Redis 6+)

    def __repr__(self) -> str:
        return (
            f"RedisSettings(host={self.host!r}, port={self.port}, db={self.db}, "
            f"username={self.username!r}, password=***)"
        )

    def describe(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class Meter:
    number: int
    name: str
    pulses_per_kwh: int
    max_power_w: int
    deviation_pct: Decimal
    power_factor: Decimal = Decimal(1)


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """Sections of an ini text. Values are taken verbatim after `=` (see module doc)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1].strip(), {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ConfigError(f"line {lineno}: expected 'key = value' inside a [section]")
        current[key.strip().lower()] = value[1:] if value.startswith(" ") else value
    return sections


def postgres_settings(path: str | os.PathLike[str] | None = None) -> PostgresSettings:
    ini = Path(path or os.environ.get("POSTGRES_INI") or DEFAULT_POSTGRES_INI)
    try:
        sections = parse_ini(ini.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {ini}: {exc.strerror}") from None
    section = sections.get("postgresql")
    if section is None:
        raise ConfigError(f"{ini} has no [postgresql] section")
    missing = [k for k in ("host", "database", "user") if not section.get(k)]
    if missing:
        raise ConfigError(f"{ini} [postgresql] lacks {', '.join(missing)}")
    try:
        port = int(section.get("port") or 5432)
    except ValueError:
        raise ConfigError(f"{ini} [postgresql] port is not a number") from None
    return PostgresSettings(
        host=section["host"],
        port=port,
        database=section["database"],
        user=section["user"],
        password=section.get("password", ""),
    )


def redis_settings(env: dict[str, str] | None = None) -> RedisSettings:
    env = dict(os.environ) if env is None else env
    try:
        port = int(env.get("REDIS_PORT") or 6379)
        db = int(env.get("REDIS_DB") or 0)
    except ValueError:
        raise ConfigError("REDIS_PORT and REDIS_DB must be whole numbers") from None
    return RedisSettings(
        host=env.get("REDIS_HOST") or "redis-db",
        port=port,
        db=db,
        password=env.get("REDIS_PASSWORD") or None,
        username=env.get("REDIS_USERNAME") or None,
    )


def meters_path() -> Path:
    explicit = os.environ.get("METERS_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in DEFAULT_METERS_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_METERS_PATHS[-1]


def load_meters(path: str | os.PathLike[str] | None = None) -> dict[int, Meter]:
    """The configured meters by number. Raises ConfigError naming the first problem."""
    source = Path(path) if path else meters_path()
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read meter config {source}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"meter config {source}: {exc}") from None
    meters: dict[int, Meter] = {}
    for i, entry in enumerate(data.get("meter", []), start=1):
        where = f"meter config {source}, [[meter]] #{i}"
        try:
            meter = Meter(
                number=_whole(entry["number"], 1, 99, "number"),
                name=str(entry.get("name") or f"Meter {entry['number']}"),
                pulses_per_kwh=_whole(entry["pulses_per_kwh"], 1, 1_000_000, "pulses_per_kwh"),
                max_power_w=_whole(entry["max_power_w"], 1, 10_000_000, "max_power_w"),
                deviation_pct=_decimal(entry.get("deviation_pct", 5), "deviation_pct"),
                power_factor=_decimal(entry.get("power_factor", 1), "power_factor"),
            )
        except KeyError as exc:
            raise ConfigError(f"{where} lacks {exc.args[0]}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if meter.number in meters:
            raise ConfigError(f"{where}: meter {meter.number} is configured twice")
        meters[meter.number] = meter
    if not meters:
        raise ConfigError(f"meter config {source} configures no [[meter]]")
    if len(meters) > MAX_METERS:
        raise ConfigError(f"meter config {source} configures {len(meters)} meters; at most 8")
    return dict(sorted(meters.items()))


def _whole(value: object, low: int, high: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _decimal(value: object, name: str) -> Decimal:
    # TOML floats are binary; go through their shortest repr so 2.5 means exactly 2.5.
    try:
        result = Decimal(str(value)) if isinstance(value, int | float | str) else None
    except InvalidOperation:
        result = None
    if result is None or isinstance(value, bool) or not result.is_finite() or result < 0:
        raise ValueError(f"{name} must be a number of 0 or more, not {value!r}")
    return result
