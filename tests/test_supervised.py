"""End to end on the host: the supervised stack started through entrypoint.sh exactly as the
container starts it (render the ini, wait, set up, run supervisord with supervisord.conf),
against this run's real PostgreSQL database and Redis keyspace. Pulses go in through the
webhook's protocol (SET only if absent) and are looked for in PostgreSQL. The stack itself is
tests/stack.py."""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pg8000.native
import psutil
import pytest
import redis
from stack import PASSWORD, PROGRAMS, Stack, Webhook, all_stored, counted

import mqtt_support as ms
from energy_worker.adapters import config
from energy_worker.programs.publisher import ha_discovery
from helpers import wait_until
from mqtt_support import Space

# The MQTT fixtures, by name in this module, where pytest looks for them.
mqtt_broker, space = ms.mqtt_broker, ms.space


@pytest.fixture
def stack(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
) -> Iterator[Stack]:
    s = Stack(pg, redis_db, tmp_path)
    try:
        yield s.start()
    finally:
        s.close()
        assert PASSWORD not in s.log(), "the password reached a log line"


def test_pulses_reach_postgres_and_every_line_names_its_process(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings, sql: pg8000.native.Connection
):
    hook = Webhook(r)
    hook.pulses(30)
    all_stored(pg, hook)
    rows = sql.run("SELECT count(*) FROM consumption WHERE meter_no IN (1, 2, 3)")
    assert rows[0][0] >= 3  # history rows, not only the meters' state
    status = stack.ctl("status")
    assert status.returncode == 0  # what the HEALTHCHECK runs
    # Without MQTT_HOST the publisher is no program at all (not one that is down).
    assert "publisher" not in stack.info() and "publisher" not in status.stdout
    # every line of the programs carries its name; supervisord's own lines carry its level
    for line in stack.log().splitlines():
        parts = line.split()
        assert len(parts) >= 3, line
        assert parts[1] in (*PROGRAMS, "exit_listener", "entrypoint", "wait", "setup") or parts[
            2
        ] in (
            "INFO",
            "WARN",
            "CRIT",
            "ERRO",
        ), line


def test_supervisorctl_restart_processor_loses_nothing(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings
):
    hook = Webhook(r)
    hook.pulses(20)
    before = stack.pid("processor")
    result = stack.ctl("restart", "processor")
    assert result.returncode == 0, result.stdout + result.stderr
    hook.pulses(20)
    assert stack.pid("processor") != before
    all_stored(pg, hook)


@pytest.mark.parametrize("program", PROGRAMS)
def test_sigkill_of_a_program_loses_nothing(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings, program: str
):
    hook = Webhook(r)
    hook.pulses(15)
    victim = stack.pid(program)
    os.kill(victim, signal.SIGKILL)
    # pulses keep coming while it is down; they wait in Redis or on the list
    hook.pulses(15)
    wait_until(
        lambda: stack.info()[program]["statename"] == "RUNNING" and stack.pid(program) != victim,
        20,
        0.05,
        f"{program} to be started again",
    )
    hook.pulses(15)
    all_stored(pg, hook)
    assert f"{program} is down; starting it again" in stack.log()
    # every program back to RUNNING (supervisorctl status exits 0 only then), none crashed
    wait_until(lambda: stack.ctl("status").returncode == 0, 15, 0.1, "all programs running")
    assert "Traceback" not in stack.log(), stack.log()[-4000:]


def test_stop_key_ends_supervisord_with_zero_and_everything_stored(
    stack: Stack, r: redis.Redis, pg: config.PostgresSettings
):
    hook = Webhook(r)
    hook.pulses(60, meters=(1, 2, 3, 4, 5, 6, 7))
    started = time.monotonic()
    wait_until(lambda: r.set("stop", "true", nx=True), 10, 0.002, "stop to be accepted")
    assert stack.wait_exit(30) == 0, stack.log()
    assert time.monotonic() - started < 15, "stopping should take seconds"
    assert counted(pg) == hook.sent
    assert "processor finished the stop request" in stack.log()
    assert (stack.run_dir / "stop-requested").exists()  # what told the entrypoint to exit 0


def test_sigterm_ends_the_entrypoint_with_143_and_every_program_stopped(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, r: redis.Redis, tmp_path: Path
):
    # `docker stop`, or the Docker daemon stopping for a reboot: SIGTERM to the container's
    # first process. supervisord exits 0 then; the container must not, or `restart:
    # on-failure` leaves it down after the reboot. A stop marker of an earlier run is stale.
    s = Stack(pg, redis_db, tmp_path)
    s.run_dir.mkdir()
    (s.run_dir / "stop-requested").write_text("the stop key\n")
    try:
        s.start()
        hook = Webhook(r)
        hook.pulses(10)
        all_stored(pg, hook)
        pids = [s.rpc().getPID(), *(s.pid(p) for p in PROGRAMS)]
        assert s.popen is not None
        s.popen.send_signal(signal.SIGTERM)  # the entrypoint's process only, not its group
        assert s.wait_exit(40) == 143, s.log()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # the log is copied by a thread of the test: its last line may come a moment later
        last = "supervisord ended on SIGTERM without a stop key; exit 143"
        wait_until(lambda: last in s.log(), 10, 0.05, "the entrypoint's last line")
        assert "Traceback" not in s.log(), s.log()[-4000:]
        # one line says the service is ready; no alarm at start; a stop is a normal one
        assert "exit_listener INFO ready: router, processor, pusher running" in s.log()
        assert " CRIT " not in s.log() and " WARN " not in s.log(), s.log()
        assert "INFO SIGTERM: stopping the programs" in s.log()
        for program in PROGRAMS:
            assert f"INFO stopped: {program} (exit status 143)" in s.log()
    finally:
        s.close()


def test_a_restarted_stack_finds_its_data_again_and_with_mqtt_host_publishes_it(
    pg: config.PostgresSettings,
    redis_db: config.RedisSettings,
    r: redis.Redis,
    tmp_path: Path,
    space: Space,
    sql: pg8000.native.Connection,
):
    hook = Webhook(r)
    (tmp_path / "first").mkdir()
    first = Stack(pg, redis_db, tmp_path / "first")
    try:
        first.start()
        hook.pulses(10)
        all_stored(pg, hook)
    finally:
        first.close(signal.SIGTERM)  # as `docker stop` does
    # Started again with MQTT_HOST set: the publisher is one more program, and Home Assistant
    # gets every meter's count from before the restart.
    (tmp_path / "second").mkdir()
    second = Stack(pg, redis_db, tmp_path / "second")
    second.env.update(space.env())
    layout = space.layout(str(sql.run("SELECT id FROM installation")[0][0]))
    w = space.watch()
    try:
        second.start()  # every program RUNNING, the publisher included
        status = second.ctl("status")
        assert status.returncode == 0, status.stdout  # what the HEALTHCHECK runs
        assert re.search(r"^publisher +RUNNING", status.stdout, re.M), status.stdout

        def published() -> bool:
            return all(
                w.latest(layout.state_topic(meter, "energy"))
                == ha_discovery.format_kwh(Decimal(n) / 1000).encode()
                for meter, n in hook.sent.items()
            )

        wait_until(published, 20, 0.01, "every meter's energy in MQTT")
        assert w.latest(layout.availability_topic) == b"online"
        hook.pulses(10)
        all_stored(pg, hook)
    finally:
        second.close()
        w.close()
    assert PASSWORD not in second.log()


def environ(pid: int) -> bytes:
    """The environment a process was started with, as /proc shows it to its user."""
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_each_program_sees_only_its_own_secrets_and_pid_1_none(
    pg: config.PostgresSettings, tmp_path: Path
):
    """The stack with a Redis that requires energy-worker's password (the shipped ACL), a sheet
    URL and an MQTT password: each program's environment names the file of its own secrets
    only, and neither the entrypoint (PID 1 in the container, exec'd again without them) nor
    supervisord holds any, in /proc/<pid>/environ."""
    import redis  # noqa: PLC0415 - the webhook's side
    from test_redis_acl import WEBHOOK_PW, WORKER_PW, start_acl_redis  # noqa: PLC0415

    acl = start_acl_redis(tmp_path / "redis")
    s = Stack(pg, config.RedisSettings("127.0.0.1", acl.port, 0), tmp_path)
    url = "http://127.0.0.1:9/macros/s/THE-SHEETS-KEY/exec"
    mqtt_password = "mqtt-secret-ø"
    s.env.update(
        REDIS_USERNAME="energy-worker",
        REDIS_PASSWORD=WORKER_PW,
        GOOGLE_WEBHOOK_URL=url,
        MQTT_HOST="127.0.0.1",
        MQTT_PORT=str(ms.free_port()),  # nobody there: the publisher waits, RUNNING
        MQTT_USERNAME="energy-worker",
        MQTT_PASSWORD=mqtt_password,
    )
    secrets = {
        "REDIS_PASSWORD": WORKER_PW.encode(),
        "GOOGLE_WEBHOOK_URL": url.encode(),
        "MQTT_PASSWORD": mqtt_password.encode(),
        "POSTGRES_PASSWORD": PASSWORD.encode(),
    }
    own = {
        "router": {"REDIS_PASSWORD"},
        "processor": {"REDIS_PASSWORD"},
        "pusher": {"REDIS_PASSWORD", "GOOGLE_WEBHOOK_URL"},
        "publisher": {"MQTT_PASSWORD"},
    }
    try:
        s.start()
        assert s.popen is not None
        webhook: Any = redis.Redis(port=acl.port, username="webhook", password=WEBHOOK_PW)
        hook = Webhook(webhook)
        hook.pulses(6)
        all_stored(pg, hook)  # the programs logged in with the passwords of their files
        entrypoint = s.popen.pid
        (supervisord,) = [
            p.pid for p in psutil.Process(entrypoint).children() if "supervisord" in p.cmdline()[1]
        ]
        for pid in (entrypoint, supervisord):
            env = environ(pid)
            for name, value in secrets.items():
                assert value not in env, (pid, name)
            assert not [n for n in secrets if f"\0{n}_FILE=".encode() in b"\0" + env], pid
        for program, names in own.items():
            variables = dict(
                entry.split(b"=", 1) for entry in environ(s.pid(program)).split(b"\0") if entry
            )
            for name, value in secrets.items():
                assert value not in b"\0".join(variables.values()), (program, name)
            given = {name for name in secrets if f"{name}_FILE".encode() in variables}
            assert given == names, program
            for name in names:
                path = Path(variables[f"{name}_FILE".encode()].decode())
                assert path.read_bytes() == secrets[name]
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        s.close()
        acl.stop()
    log = s.log()
    for value in secrets.values():
        assert value.decode() not in log
