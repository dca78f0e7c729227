"""make run's .env (envfile.py), read as docker compose reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from energy_worker.adapters import envfile
from energy_worker.adapters.config import ConfigError
from helpers import REPO


def read(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    file = tmp_path / ".env"
    file.write_text(text)
    return envfile.read(file, environ or {})


def test_compose_quoting(tmp_path: Path):
    values = read(
        tmp_path,
        "# a comment\n"
        "POSTGRES_PASSWORD='p$ss%w#rd \"x\" \\y ${HOME}'\n"
        "export POSTGRES_USER=energy  # unquoted: a comment after a space\n"
        'GRAFANA_DB_PASSWORD="two\\nlines"\n'
        "GRAFANA_DB_USER=${USER_NAME:-reader}\n"
        "EMPTY=\n",
        {"HOME": "/home/x"},
    )
    assert values == {
        "POSTGRES_PASSWORD": 'p$ss%w#rd "x" \\y ${HOME}',  # single quotes: literal
        "POSTGRES_USER": "energy",
        "GRAFANA_DB_PASSWORD": "two\nlines",
        "GRAFANA_DB_USER": "reader",
        "EMPTY": "",
    }


def test_a_dollar_compose_would_expand_is_refused_naming_the_variable_not_the_value(
    tmp_path: Path,
):
    with pytest.raises(ConfigError) as refused:
        read(tmp_path, "A=1\nPOSTGRES_PASSWORD=p$ss%w#rd\n")
    message = str(refused.value)
    assert "POSTGRES_PASSWORD in" in message and "(line 2)" in message
    assert "single quotes" in message and "ss%w" not in message


def test_the_environment_wins_and_no_file_is_no_setting(tmp_path: Path):
    (tmp_path / ".env").write_text(
        "TZ=UTC\nLOG_LEVEL=DEBUG\nGRAFANA_ADMIN_PASSWORD='x'\nPOSTGRES_PASSWORD_FILE=/run/pw\n"
    )
    merged, found = envfile.merged({"TZ": "Europe/Copenhagen"}, tmp_path)
    # Grafana's admin login is compose's alone: no program gets it
    assert merged == {
        "TZ": "Europe/Copenhagen",
        "LOG_LEVEL": "DEBUG",
        "POSTGRES_PASSWORD_FILE": "/run/pw",
    }
    assert found == tmp_path / ".env"
    other = {"ENERGY_WORKER_ENV_FILE": str(tmp_path / "none")}
    assert envfile.merged(other, tmp_path) == (other, None)


def test_a_line_that_is_no_setting_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"line 2: not NAME=value"):
        read(tmp_path, "A=1\nthis is not a setting\n")


def test_the_programs_get_every_variable_compose_gives_the_service():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    given = set(compose["services"]["energy-worker"]["environment"])
    assert given <= set(envfile.SERVICE), sorted(given - set(envfile.SERVICE))
