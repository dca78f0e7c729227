"""Every port and the Redis database number are checked where they are read: one table of cases
for the three places a port comes from (the socket layer would take 70000 as port 4464)."""

from __future__ import annotations

from pathlib import Path

import pytest

from energy_worker import config


def redis_port(text: str, tmp_path: Path) -> int:
    return config.redis_settings({"REDIS_PORT": text}).port


def mqtt_port(text: str, tmp_path: Path) -> int:
    return config.mqtt_settings({"MQTT_HOST": "m", "MQTT_PORT": text}).port


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
    assert config.mqtt_settings({"MQTT_HOST": "m"}).port == 1883
    ini = tmp_path / "postgres.ini"
    ini.write_text("[postgresql]\nhost = h\ndatabase = d\nuser = u\n")
    assert config.postgres_settings(ini).port == 5432


@pytest.mark.parametrize("text", ["-1", "one", "1.5"])
def test_a_redis_database_number_that_is_none_is_refused(text: str):
    with pytest.raises(config.ConfigError, match="REDIS_DB must be a database number"):
        config.redis_settings({"REDIS_DB": text})
