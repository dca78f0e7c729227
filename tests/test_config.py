"""Settings as the service reads them. Every port and the Redis database number are checked
where they are read: one table of cases for the three places a port comes from (the socket layer
would take 70000 as port 4464). The meter config refuses what it does not know; the command
reads PostgreSQL's settings from the environment as the entrypoint does."""

from __future__ import annotations

from pathlib import Path

import pytest

from energy_worker.adapters import config
from energy_worker.programs.publisher import settings as publisher_settings


def redis_port(text: str, tmp_path: Path) -> int:
    return config.redis_settings({"REDIS_PORT": text}).port


def mqtt_port(text: str, tmp_path: Path) -> int:
    return publisher_settings.mqtt_settings({"MQTT_HOST": "m", "MQTT_PORT": text}).port


def postgres_port(text: str, tmp_path: Path) -> int:
    ini = tmp_path / "postgres.ini"
    ini.write_text(f"[postgresql]\nhost = h\ndatabase = d\nuser = u\nport = {text}\n")
    return config.postgres_settings(ini).port


READERS = {"REDIS_PORT": redis_port, "MQTT_PORT": mqtt_port, "port": postgres_port}
GOOD = [("1", 1), ("6380", 6380), (" 65535 ", 65535)]
BAD = ["0", "65536", "70000", "-1", "63 79", "6379.0", "0x10", "６３７９", "port", "+80"]


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize(("text", "port"), GOOD)
def test_a_port_in_range_is_taken(name: str, text: str, port: int, tmp_path: Path):
    assert READERS[name](text, tmp_path) == port


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("text", BAD)
def test_a_port_out_of_range_or_not_a_number_is_refused(name: str, text: str, tmp_path: Path):
    with pytest.raises(config.ConfigError, match=rf"{name} must be a port number \(1-65535\)"):
        READERS[name](text, tmp_path)


def test_an_unset_port_is_the_default(tmp_path: Path):
    assert config.redis_settings({}).port == 6379
    assert publisher_settings.mqtt_settings({"MQTT_HOST": "m"}).port == 1883
    ini = tmp_path / "postgres.ini"
    ini.write_text("[postgresql]\nhost = h\ndatabase = d\nuser = u\n")
    assert config.postgres_settings(ini).port == 5432


@pytest.mark.parametrize("text", ["-1", "one", "1.5"])
def test_a_redis_database_number_that_is_none_is_refused(text: str):
    with pytest.raises(config.ConfigError, match="REDIS_DB must be a database number"):
        config.redis_settings({"REDIS_DB": text})


METER = """
[[meter]]
number = 1
pulses_per_kwh = 1000
max_power_w = 17250
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meters.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("pulses_per_kWh = 2000", "unknown key 'pulses_per_kWh' (did you mean pulses_per_kwh?)"),
        ('colour = "red"', "unknown key 'colour' (known: number, name, pulses_per_kwh"),
        ("max_power = 1", "unknown key 'max_power' (did you mean max_power_w?)"),
    ],
)
def test_an_unknown_key_of_a_meter_is_refused_with_the_near_name(
    tmp_path: Path, extra: str, message: str
):
    with pytest.raises(config.ConfigError) as refused:
        config.load_meters(write(tmp_path, METER + extra + "\n"))
    assert "[[meter]] #1: " + message in str(refused.value)


def test_an_unknown_table_is_refused_too(tmp_path: Path):
    with pytest.raises(config.ConfigError) as refused:
        config.load_meters(write(tmp_path, METER.replace("[[meter]]", "[[meters]]")))
    assert "unknown key 'meters' (did you mean meter?)" in str(refused.value)


def test_the_shipped_config_has_no_unknown_key():
    assert len(config.load_meters(config.DEFAULT_METERS_PATHS[-1])) == 7


def test_postgres_from_the_environment_as_the_entrypoint_reads_it(tmp_path: Path):
    assert config.postgres_from_env({"POSTGRES_INI": "x"}) is None  # no POSTGRES_HOST: the ini
    secret = tmp_path / "pw"
    secret.write_text("p$ss w#rd\n")  # a docker secret, its line break dropped
    env = {
        "POSTGRES_HOST": "db",
        "POSTGRES_DB": "energy",
        "POSTGRES_USER": "energy",
        "POSTGRES_PASSWORD_FILE": str(secret),
    }
    settings = config.postgres_from_env(env)
    assert settings is not None and settings.describe() == "energy@db:5432/energy"
    assert settings.password == "p$ss w#rd" and "p$ss" not in repr(settings)
    with pytest.raises(config.ConfigError, match="both POSTGRES_PASSWORD and"):
        config.postgres_from_env({**env, "POSTGRES_PASSWORD": "x"})
    with pytest.raises(config.ConfigError, match=r"not POSTGRES_DB \(or POSTGRES_DB_FILE\)"):
        config.postgres_from_env({**env, "POSTGRES_DB": ""})
    with pytest.raises(config.ConfigError, match="POSTGRES_PORT must be a port number"):
        config.postgres_from_env({**env, "POSTGRES_PORT": "54x"})


def test_the_redis_password_from_a_file(tmp_path: Path):
    secret = tmp_path / "redis"
    secret.write_text("s3cret\n")
    settings = config.redis_settings({"REDIS_PASSWORD_FILE": str(secret)})
    assert settings.password == "s3cret"
    with pytest.raises(config.ConfigError, match="REDIS_PASSWORD_FILE names"):
        config.redis_settings({"REDIS_PASSWORD_FILE": str(tmp_path / "none")})


@pytest.mark.parametrize(
    "password", [" leading space", "trailing space ", "a = b ; c # d", "p$ss%w#rd", "[x]", "é€😀"]
)
def test_postgres_ini_keeps_any_one_line_password_verbatim(password: str, tmp_path: Path):
    ini = tmp_path / "postgres.ini"
    written = config.PostgresSettings("db", 5433, "energy", "owner", password, True)
    config.write_postgres_ini(written, ini)
    assert ini.stat().st_mode & 0o777 == 0o600
    read = config.postgres_settings(ini)
    assert read == written and str(read.password) == password
    assert password not in repr(read)


def test_postgres_ini_refuses_a_line_break_and_what_it_does_not_understand(tmp_path: Path):
    ini = tmp_path / "postgres.ini"
    with pytest.raises(config.ConfigError, match="password with a line break"):
        config.write_postgres_ini(config.PostgresSettings("db", 5432, "e", "u", "a\nb"), ini)
    for text, message in [
        ("host = db\n", "expected 'key = value' inside a"),
        ("[postgresql]\nhost = db\nuser = u\n", "lacks database"),
        ("[postgresql]\nhost = db\ndatabase = e\nuser = u\ntls = yes\n", "must be true or false"),
        (
            "[postgresql]\nhost = db\ndatabase = e\nuser = u\nca_file = /x\n",
            "ca_file .* tls is not",
        ),
        ("[other]\nhost = db\n", "has no \\[postgresql\\] section"),
    ]:
        ini.write_text(text)
        with pytest.raises(config.ConfigError, match=message):
            config.postgres_settings(ini)


def test_a_secret_from_a_file_drops_its_trailing_line_breaks_only(tmp_path: Path):
    path = tmp_path / "secret"
    path.write_text("  two words \n\n")
    secret = config.secret_from_env({"S_FILE": str(path)}, "S")
    assert secret == "  two words " and repr(secret) == "'***'"
    assert config.secret_from_env({"S": "direct"}, "S") == "direct"
    assert config.secret_from_env({"S": ""}, "S") is None
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(config.ConfigError, match="not UTF-8 text"):
        config.secret_from_env({"S_FILE": str(path)}, "S")
