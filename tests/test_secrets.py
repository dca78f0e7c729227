"""Secrets from files (config.secret_from_env): how each program gets its own under supervisord
(entrypoint.sh writes them, supervisord.conf names them); never shown in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from energy_worker.adapters import config
from energy_worker.programs.publisher import settings as publisher_settings
from energy_worker.programs.pusher import settings as pusher_settings


def test_a_secret_comes_from_its_file_when_the_variable_is_unset(tmp_path: Path):
    secret = tmp_path / "redis_password"
    secret.write_text("p$ss w\u00f6rd '\" %s\n")
    env = {"REDIS_PASSWORD_FILE": str(secret), "REDIS_USERNAME": "energy-worker"}
    settings = config.redis_settings(env)
    assert settings.password == "p$ss w\u00f6rd '\" %s"  # the trailing line break dropped
    assert "w\u00f6rd" not in repr(settings)
    # both at once are refused, as entrypoint.sh's file_env refuses them; an empty file is no
    # password
    with pytest.raises(config.ConfigError, match="both REDIS_PASSWORD and REDIS_PASSWORD_FILE"):
        config.redis_settings({**env, "REDIS_PASSWORD": "direct"})
    secret.write_text("")
    assert config.redis_settings(env).password is None


def test_the_pushers_and_the_publishers_secrets_too(tmp_path: Path):
    url, password = tmp_path / "url", tmp_path / "mqtt"
    url.write_text("https://script.google.com/macros/s/KEY/exec")
    password.write_text("mqtt pw")
    push = pusher_settings.push_settings({"GOOGLE_WEBHOOK_URL_FILE": str(url)})
    assert push.sheet_url == "https://script.google.com/macros/s/KEY/exec"
    mqtt = publisher_settings.mqtt_settings(
        {"MQTT_HOST": "broker", "MQTT_USERNAME": "u", "MQTT_PASSWORD_FILE": str(password)}
    )
    assert mqtt.password == "mqtt pw"


def test_an_unreadable_secret_file_is_named_not_shown(tmp_path: Path):
    with pytest.raises(config.ConfigError, match=r"REDIS_PASSWORD_FILE names .*cannot be read"):
        config.redis_settings({"REDIS_PASSWORD_FILE": str(tmp_path / "missing")})
