"""Where the processes find PostgreSQL, Redis and the meters.

PostgreSQL: an ini file (default /etc/postgres.ini, override with POSTGRES_INI), section
[postgresql] with host, port, database, user, password, and tls (true: TLS required, the server's
certificate and host name verified against the system's CAs, or only ca_file's) for a database
on another host. It is read by a small parser of our own
because ConfigParser interpolates `%` and strips the edges of values: here a value is everything
after `=` (one space after it is layout, not value), so any printable password survives.

Redis: REDIS_HOST (default redis-db, the compose service), REDIS_PORT, REDIS_DB, REDIS_PASSWORD
(or REDIS_PASSWORD_FILE), and REDIS_USERNAME for a server with ACL users.

The `energy-worker` command reads PostgreSQL's settings as the entrypoint does first
(POSTGRES_HOST and the others, postgres_from_env), then the ini.

Meters: a TOML file (METERS_CONFIG, else /etc/energy-worker/meters.toml, else the default for
7 meters shipped in services/energy_worker/meters.toml).

The pusher: GOOGLE_WEBHOOK_URL, PUSH_TIME, TZ, PUSH_TIMEOUT, PUSH_HISTORY_WAIT (push_settings).

The publisher (Home Assistant over MQTT): MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD,
MQTT_TLS, MQTT_CA_FILE, MQTT_DISCOVERY_PREFIX, MQTT_TOPIC_PREFIX (mqtt_settings).

Secrets (passwords, the sheet's URL) are held as Secret, whose repr is '***': no settings object
can show one in a log line or a traceback. Each may come from a file instead, <NAME>_FILE (as
supervisord.conf gives each program its own, from the files entrypoint.sh writes): the
environment then holds no secret at all.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

from energy_worker.core.domain import Meter

DEFAULT_POSTGRES_INI = Path("/etc/postgres.ini")
# The owner's own meters where the container mounts them, else the package's default (package
# data, found wherever the package is installed).
DEFAULT_METERS_PATHS = (
    Path("/etc/energy-worker/meters.toml"),
    Path(str(resources.files("energy_worker").joinpath("meters.toml"))),
)
MAX_METERS = 8
METER_KEYS = ("number", "name", "pulses_per_kwh", "max_power_w", "deviation_pct", "power_factor")
MAX_NAME_CHARS = 200  # of a meter name


class ConfigError(Exception):
    """A configuration file or variable is missing or wrong; the message says which."""


class Secret(str):
    """A string that never shows itself in a repr (so not in a dataclass's, nor a traceback's).
    Used as a str where it is needed: only there is its value written out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


def secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def secret_from_env(env: Mapping[str, str], name: str) -> Secret | None:
    """The secret `name` from the environment, else from the file <name>_FILE names, as
    entrypoint.sh reads it (file_env); None when neither is set."""
    return secret(file_env(env, name))


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    database: str
    user: str
    password: str = ""  # held as a Secret, whatever it was given as
    tls: bool = False  # required and verified; never a silent fall back to plain text
    ca_file: str | None = None  # with tls: trust only this CA file; None: the system's CAs

    def __post_init__(self) -> None:
        object.__setattr__(self, "password", Secret(self.password))

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}{' (TLS)' if self.tls else ''}"


INI_KEYS = ("host", "port", "database", "user", "password", "tls", "ca_file")


def write_postgres_ini(settings: PostgresSettings, path: str | os.PathLike[str]) -> None:
    """Write `settings` as postgres.ini, mode 0600, in place (its folder may not be writable,
    the file is): what the set-up does once it has made the programs' own login."""
    values = {
        "host": settings.host,
        "port": str(settings.port),
        "database": settings.database,
        "user": settings.user,
        "password": str(settings.password),
        "tls": "true" if settings.tls else "false",
        "ca_file": settings.ca_file or "",
    }
    for key, value in values.items():
        if len(value.splitlines()) > 1 or value.endswith(("\n", "\r")):
            raise ConfigError(f"postgres.ini cannot hold a {key} with a line break")
    text = "[postgresql]\n" + "".join(f"{key} = {values[key]}\n" for key in INI_KEYS)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    db: int
    password: str | None = None  # held as a Secret, whatever it was given as
    username: str | None = None  # for servers with ACL users (Redis 6+)

    def __post_init__(self) -> None:
        object.__setattr__(self, "password", secret(self.password))

    def describe(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"


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


def file_env(env: Mapping[str, str], name: str) -> str | None:
    """A variable as entrypoint.sh's file_env reads it: NAME, or the content of the file that
    NAME_FILE names (a docker secret; its trailing line breaks dropped). Never both."""
    value, path = env.get(name), env.get(f"{name}_FILE")
    if value and path:
        raise ConfigError(f"both {name} and {name}_FILE are set (but are exclusive)")
    if value or not path:
        return value or None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\n") or None
    except OSError as exc:
        raise ConfigError(
            f"{name}_FILE names {path}, which cannot be read: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}_FILE names {path}, which is not UTF-8 text") from None


def postgres_from_env(env: Mapping[str, str]) -> PostgresSettings | None:
    """PostgreSQL from POSTGRES_HOST, _PORT, _DB, _USER, _PASSWORD (each also as *_FILE), as
    the entrypoint reads them; None when POSTGRES_HOST is unset (the ini then)."""
    host = file_env(env, "POSTGRES_HOST")
    if not host:
        return None
    values = {
        name: file_env(env, name) for name in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD")
    }
    missing = [f"{name} (or {name}_FILE)" for name, value in values.items() if not value]
    if missing:
        raise ConfigError(f"POSTGRES_HOST is set, but not {', '.join(missing)}")
    return PostgresSettings(
        host=host,
        port=port_number(file_env(env, "POSTGRES_PORT"), 5432, "POSTGRES_PORT"),
        database=values["POSTGRES_DB"] or "",
        user=values["POSTGRES_USER"] or "",
        password=Secret(values["POSTGRES_PASSWORD"] or ""),
    )


def postgres_settings(path: str | os.PathLike[str] | None = None) -> PostgresSettings:
    ini = Path(path or os.environ.get("POSTGRES_INI") or DEFAULT_POSTGRES_INI)
    try:
        sections = parse_ini(ini.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {ini}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{ini} is not valid UTF-8") from None
    section = sections.get("postgresql")
    if section is None:
        raise ConfigError(f"{ini} has no [postgresql] section")
    missing = [k for k in ("host", "database", "user") if not section.get(k)]
    if missing:
        raise ConfigError(f"{ini} [postgresql] lacks {', '.join(missing)}")
    port = port_number(section.get("port"), 5432, f"{ini} [postgresql] port")
    tls = (section.get("tls") or "false").strip().lower()
    if tls not in ("true", "false"):
        raise ConfigError(f"{ini} [postgresql] tls (POSTGRES_TLS) must be true or false")
    ca_file = section.get("ca_file") or None
    if ca_file is not None:
        if tls != "true":
            raise ConfigError(f"{ini} [postgresql] ca_file (POSTGRES_CA_FILE) is set, tls is not")
        try:
            Path(ca_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read POSTGRES_CA_FILE {ca_file}: {exc.strerror}") from None
    return PostgresSettings(
        host=section["host"],
        port=port,
        database=section["database"],
        user=section["user"],
        password=Secret(section.get("password", "")),
        tls=tls == "true",
        ca_file=ca_file,
    )


def port_number(text: str | None, default: int, name: str) -> int:
    """A TCP port, or the default when unset; anything else is refused (the socket layer would
    take 70000 as port 4464)."""
    text = (text or "").strip()
    if not text:
        return default
    port = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be a port number (1-65535), not {text!r}")
    return port


def redis_settings(env: Mapping[str, str] | None = None) -> RedisSettings:
    env = os.environ if env is None else env
    port = port_number(env.get("REDIS_PORT"), 6379, "REDIS_PORT")
    db_text = (env.get("REDIS_DB") or "").strip()
    try:
        db = int(db_text or 0)
    except ValueError:
        db = -1
    if db < 0:
        raise ConfigError(f"REDIS_DB must be a database number (0 or more), not {db_text!r}")
    return RedisSettings(
        host=env.get("REDIS_HOST") or "redis-db",
        port=port,
        db=db,
        password=secret_from_env(env, "REDIS_PASSWORD"),
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
    import tomllib  # noqa: PLC0415 - only the programs that load meters pay for the parser

    source = Path(path) if path else meters_path()
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read meter config {source}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"meter config {source}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"meter config {source} is not UTF-8 (byte {exc.start})") from None
    unknown_keys(data, ("meter",), f"meter config {source}")
    entries = data.get("meter", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"meter config {source}: meters must be [[meter]] tables")
    meters: dict[int, Meter] = {}
    for i, entry in enumerate(entries, start=1):
        where = f"meter config {source}, [[meter]] #{i}"
        unknown_keys(entry, METER_KEYS, where)
        try:
            meter = Meter(
                number=_whole(entry["number"], 1, 99, "number"),
                name=_name(entry.get("name") or f"Meter {entry['number']}"),
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


def unknown_keys(table: dict[str, object], known: tuple[str, ...], where: str) -> None:
    """A key the service does not read is a typo until proven otherwise (`pulses_per_kWh`
    would leave the meter at a default without a word): refused, naming the near one."""
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _name(value: object) -> str:
    """A meter's name, stored as written: PostgreSQL holds no NUL byte, and a name is a label."""
    name = str(value)
    if "\x00" in name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name must be at most {MAX_NAME_CHARS} characters without a NUL byte")
    return name


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


# Seconds between the processor's commits, unless a backlog waits (COMMIT_INTERVAL). Here, not in
# the processor, because the command judges the processor's lag by it too.
COMMIT_INTERVAL = 5.0


def commit_interval(env: Mapping[str, str]) -> float:
    """COMMIT_INTERVAL: seconds between the processor's commits, from 0 to 60."""
    return seconds(env, "COMMIT_INTERVAL", COMMIT_INTERVAL, 0, 60)


def meter_silent_after(env: Mapping[str, str] | None = None) -> int:
    """METER_SILENT_AFTER: seconds a meter must be quiet (and 100 times what its last power
    implies) before status and Grafana call it silent; an hour by default."""
    env = os.environ if env is None else env
    return int(seconds(env, "METER_SILENT_AFTER", 3600, 60, 7 * 86400))


def seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A number of seconds from the environment, within [low, high]."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a number of seconds from {low:g} to {high:g}")
    return value
