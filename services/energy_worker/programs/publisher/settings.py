"""The publisher's settings, parsed by the publisher alone: no other program loads Home
Assistant's code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from energy_worker.adapters.config import ConfigError, port_number, secret, secret_from_env
from energy_worker.programs.publisher import ha_discovery


@dataclass(frozen=True)
class MqttSettings:
    """The publisher's broker and topics (MQTT_*)."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None  # held as a Secret, whatever it was given as
    tls: bool = False
    ca_file: str | None = None  # with TLS: trust only this CA file; None: the system's CAs
    discovery_prefix: str = ha_discovery.DISCOVERY_PREFIX
    topic_prefix: str = ha_discovery.TOPIC_PREFIX

    def __post_init__(self) -> None:
        object.__setattr__(self, "password", secret(self.password))

    def describe(self) -> str:
        return f"{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def mqtt_settings(env: Mapping[str, str] | None = None) -> MqttSettings:
    """The MQTT_* variables (MQTT_PASSWORD, or the file MQTT_PASSWORD_FILE names). Raises
    ConfigError naming the variable, never showing a password; MQTT_HOST unset is one too
    (supervisord runs the publisher only when it is set)."""
    env = os.environ if env is None else env
    host = (env.get("MQTT_HOST") or "").strip()
    if not host:
        raise ConfigError("MQTT_HOST is not set: no broker to publish to")
    tls_text = (env.get("MQTT_TLS") or "").strip().lower() or "false"
    if tls_text not in ("true", "false"):
        raise ConfigError(f"MQTT_TLS must be true or false, not {tls_text!r}")
    tls = tls_text == "true"
    port = port_number(env.get("MQTT_PORT"), 8883 if tls else 1883, "MQTT_PORT")
    username = env.get("MQTT_USERNAME") or None
    password = secret_from_env(env, "MQTT_PASSWORD")
    if password is not None and username is None:
        raise ConfigError("MQTT_PASSWORD is set but MQTT_USERNAME is not")
    ca_file = env.get("MQTT_CA_FILE") or None
    if ca_file is not None:
        if not tls:
            raise ConfigError("MQTT_CA_FILE is set but MQTT_TLS is not true")
        try:
            Path(ca_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read MQTT_CA_FILE {ca_file}: {exc.strerror}") from None
    prefixes = {}
    for name, default in (
        ("MQTT_DISCOVERY_PREFIX", ha_discovery.DISCOVERY_PREFIX),
        ("MQTT_TOPIC_PREFIX", ha_discovery.TOPIC_PREFIX),
    ):
        prefixes[name] = env.get(name) or default
        if not ha_discovery.valid_prefix(prefixes[name]):
            raise ConfigError(
                f"{name} must be MQTT topic levels without + # or empty levels, "
                f"not {prefixes[name]!r}"
            )
    return MqttSettings(
        host=host,
        port=port,
        username=username,
        password=password,
        tls=tls,
        ca_file=ca_file,
        discovery_prefix=prefixes["MQTT_DISCOVERY_PREFIX"],
        topic_prefix=prefixes["MQTT_TOPIC_PREFIX"],
    )
