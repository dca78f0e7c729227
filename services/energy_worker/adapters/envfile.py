""".env, read for `make run` as docker compose reads it for the container: one file of settings,
whatever starts the service.

python-dotenv parses the lines (comments, `export`, quotes and the escapes of double quotes).
Compose's rules on top, where python-dotenv's differ:
- a single-quoted value is literal: nothing in it is expanded (python-dotenv would expand
  `${...}` there too);
- elsewhere `${NAME}` and `${NAME:-default}` are expanded, from the environment first, then the
  lines above (python-dotenv's reading of them);
- compose also expands `$NAME` without braces, which python-dotenv leaves as it is: a value
  with such a `$` outside single quotes would differ between the two, so it is refused, with
  one line naming the variable and the fix (single quotes), never the value.

The environment wins over the file, as with compose. Of the file, the programs get what compose
gives the energy-worker service (SERVICE; a test holds it to docker-compose.yaml), their *_FILE
forms, and make run's own settings; the rest of .env (Grafana's admin login, image names) is
compose's alone and reaches no program.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

from dotenv.parser import parse_stream
from dotenv.variables import parse_variables

from energy_worker.adapters.config import ConfigError

SERVICE = (
    "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
    "POSTGRES_WAIT_SECONDS", "POSTGRES_OWNER", "POSTGRES_TLS", "POSTGRES_CA_FILE",
    "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_USERNAME",
    "REDIS_WAIT_SECONDS", "LOG_LEVEL", "TZ", "METER_SILENT_AFTER",
    "GOOGLE_WEBHOOK_URL", "PUSH_TIME", "PUSH_TIMEOUT", "PUSH_HISTORY_WAIT", "GRAFANA_DB_USER",
    "GRAFANA_DB_PASSWORD", "MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD",
    "MQTT_TLS", "MQTT_CA_FILE", "MQTT_DISCOVERY_PREFIX", "MQTT_TOPIC_PREFIX", "HTTPS_PROXY",
    "NO_PROXY",
)  # fmt: skip
MAKE_RUN = ("REDIS_PUBLISH", "METERS_CONFIG", "COMMIT_INTERVAL")


def for_the_service(name: str) -> bool:
    base = name.removesuffix("_FILE")
    return base in SERVICE or name in MAKE_RUN


# A `$` compose would read as the start of a name, where python-dotenv reads a `$` (`$$` is
# compose's literal `$`, also refused: python-dotenv keeps both).
_BARE_DOLLAR = re.compile(r"\$(?!\{)")


def path(env: Mapping[str, str], repo_root: Path) -> Path:
    """The file: .env in the checkout (ENERGY_WORKER_ENV_FILE names another; the tests do)."""
    return Path(env.get("ENERGY_WORKER_ENV_FILE") or repo_root / ".env")


def read(file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of the file (empty when there is none). Raises ConfigError naming the line
    or the variable, never showing a value."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"{file} line {binding.original.line}: not NAME=value")
        if binding.key is None:
            continue
        value = binding.value or ""
        _, _, written = binding.original.string.partition("=")
        if written.lstrip().startswith("'"):
            values[binding.key] = value
            continue
        if _BARE_DOLLAR.search(value):
            raise ConfigError(
                f"{binding.key} in {file} (line {binding.original.line}) holds a `$` that docker "
                "compose would expand: put the value in single quotes, which keep it literally"
            )
        scope = {**values, **environ}
        values[binding.key] = "".join(atom.resolve(scope) for atom in parse_variables(value))
    return values


def merged(environ: Mapping[str, str], repo_root: Path) -> tuple[dict[str, str], Path | None]:
    """The environment over the file's settings, and the file when it had any."""
    file = path(environ, repo_root)
    values = read(file, environ)
    taken = {name: value for name, value in values.items() if for_the_service(name)}
    return {**taken, **environ}, (file if values else None)
