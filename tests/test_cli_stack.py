"""The `energy-worker` command end to end, against the running service: entrypoint.sh and
supervisord (tests/stack.py) on a database of this module's own and the run's Redis, pushing to
a real local HTTP server. One stack for the whole module (starting one costs seconds); the
tests run in order and each looks at what it changed.

Most calls run the command in-process (cli_support.cli: main(), as the console script calls
it); a few run the installed console script itself."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from stack import PASSWORD, Stack

from cli_support import cli, cli_process
from energy_worker.adapters import config, postgres
from energy_worker.adapters.sql import meters as meters_store
from helpers import REPO, Proc, wait_until
from sheet_server import Reply, SheetServer

pytestmark = pytest.mark.processes

METER_8 = """
[[meter]]
number = 8
name = "Garage"
pulses_per_kwh = 1000
max_power_w = 17250
"""


@dataclass
class Service:
    stack: Stack
    env: dict[str, str]  # the command's environment: the same settings as the service
    r: redis.Redis
    con: postgres.Connection
    sheet: SheetServer
    meters_file: Path
    tmp: Path


@pytest.fixture(scope="module")
def module_pg(
    pg_server: config.PostgresSettings, pg_template: str
) -> Iterator[config.PostgresSettings]:
    name = f"{pg_template}_cli"
    admin = postgres.connect(pg_server, "energy-worker tests")
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield config.PostgresSettings(**{**pg_server.__dict__, "database": name})
    admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module")
def service(
    module_pg: config.PostgresSettings,
    redis_db: config.RedisSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("cli")
    meters_file = tmp / "meters.toml"
    meters_file.write_text((REPO / "services" / "energy_worker" / "meters.toml").read_text())
    r = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    r.flushdb()
    sheet = SheetServer().start()
    stack = Stack(module_pg, redis_db, tmp)
    stack.env.update(
        METERS_CONFIG=str(meters_file),
        GOOGLE_WEBHOOK_URL=f"{sheet.base}/macros/s/KEY/exec",
        TZ="Europe/Copenhagen",
    )
    names = ("PATH", "POSTGRES_INI", "REDIS_HOST", "REDIS_PORT", "REDIS_DB")
    env = {name: stack.env[name] for name in names}
    env.update(
        ENERGY_WORKER_RUN_DIR=str(stack.run_dir),
        METERS_CONFIG=str(meters_file),
        GOOGLE_WEBHOOK_URL=stack.env["GOOGLE_WEBHOOK_URL"],
        TZ="Europe/Copenhagen",
    )
    con = postgres.connect(module_pg, "energy-worker tests")
    try:
        stack.start()
        yield Service(stack, env, r, con, sheet, meters_file, tmp)
    finally:
        stack.close()
        postgres.close_quietly(con)
        sheet.stop()
        r.flushdb()
        r.close()
        assert PASSWORD not in stack.log(), "the password reached a log line"


def counted(con: postgres.Connection) -> dict[int, tuple[int, int]]:
    """Each meter's (pulses counted, pulses delivered twice) that has any."""
    rows = con.run("SELECT meter_no, pulses_counted, pulses_repeated FROM meter_status")
    return {no: (n, rep) for no, n, rep in rows if n}


def reading(con: postgres.Connection, meter: int) -> Decimal:
    return Decimal(con.run("SELECT kWh FROM meter_status WHERE meter_no = :m", m=meter)[0][0])


def test_simulate_feeds_the_service_and_status_shows_it(service: Service):
    env, con = service.env, service.con
    # 14400 W at 1000 pulses/kWh: a pulse every 250 ms (at 0, 250, 500 and 750 ms); 7200 W:
    # every 500 ms
    result = cli(
        env, "simulate", "--meters", "1,2", "--power", "14400,7200", "--duration", "0.8",
        "--repeat", "2", "--powerup",
    )  # fmt: skip
    assert result.code == 0, result
    assert "WARNING: simulated pulses count on the real meters" in result.err
    assert "powerup sent and taken 0.0 s into the run" in result.out
    assert "All 6 pulses delivered (and 3 sent twice: counted once)." in result.out
    assert re.search(r"keys cleared after p50 [\d.]+ ms, p99 [\d.]+ ms \(9 keys", result.out)
    # counted once each; every second pulse came twice
    wait_until(lambda: counted(con) == {1: (4, 2), 2: (2, 1)}, 15, 0.05, "the pulses stored")

    text = cli_process(env, "status")  # the console script, as a person runs it
    assert text.code == 0, text.out + text.err
    table = text.out.split("\n\n")[1].splitlines()  # after the title, before the pipeline
    assert table[0].split() == ["meter", "name", "reading", "kWh", "last", "power", "now",
                                "last", "pulse", "pulses", "today", "kWh", "today"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in table[1:8]}
    # 4 pulses: the first of the history only starts the count (the note says so)
    assert rows["1"][:4] == ["1", "Meter", "1", "0.004"] and rows["1"][-2:] == ["4", "0.003*"]
    assert rows["2"][:4] == ["2", "Meter", "2", "0.002"] and rows["2"][-2:] == ["2", "0.001*"]
    assert rows["3"][3:] == ["0.000", "-", "never", "0", "-"]
    assert "*: the meter's history began today" in text.out
    assert "programs      processor RUNNING, pusher RUNNING, router RUNNING" in (text.out)
    assert text.out.rstrip().endswith("All is well.")

    data = json.loads(cli(env, "status", "--json").out)
    assert data["ok"] is True and data["attention"] == []
    one, two = data["meters"][:2]
    assert (one["kwh"], one["pulses_today"], one["last_power_w"]) == ("0.004", 4, 14400)
    assert (two["kwh"], two["pulses_today"], two["last_power_w"]) == ("0.002", 2, 7200)
    # the last power, and apart from it the bound that falls since the last pulse
    bound = 3_600_000_000 // (int(one["last_pulse_age_s"] * 1000) * 1000)
    assert one["at_most_w"] is not None and abs(one["at_most_w"] - bound) <= 100
    assert (one["kwh_today"], one["history_began_today"]) == ("0.003", True)
    assert data["pipeline"]["backlog"] == 0 and data["pipeline"]["last_commit_age_s"] < 60
    assert set(data["pipeline"]["programs"].values()) == {"RUNNING"}
    assert data["pulses_today_from"] == "meter_pulses_at"
    assert data["deadletters"]["count"] == 0 and data["pushes"]["pending"] == 0


def test_status_exits_1_while_a_program_is_down(service: Service):
    env, stack = service.env, service.stack
    stack.rpc().stopProcess("processor")  # what `supervisorctl stop processor` asks
    try:
        down = cli(env, "status")
        assert down.code == 1, down
        assert "Needs attention:\n  - processor is not running (STOPPED)" in down.out
        # meanwhile a pulse waits for it, and status shows the backlog
        assert service.r.set("channel:3:timestamp", "5000", nx=True)
        wait_until(lambda: not service.r.exists("channel:3:timestamp"), 10, 0.01, "routed")
        data = json.loads(cli(env, "status", "--json").out)
        assert (data["pipeline"]["backlog"], data["pipeline"]["backlog_change"]) == (1, 0)
        assert data["pipeline"]["programs"]["processor"] == "STOPPED" and not data["ok"]
    finally:
        stack.rpc().startProcess("processor")
        wait_until(stack.all_running, 30, 0.1, "every program RUNNING")
    wait_until(lambda: 3 in counted(service.con), 15, 0.05, "the waiting pulse stored")
    assert cli(env, "status").code == 0


def test_set_reading_asks_then_waits_until_it_is_stored(service: Service):
    env, con = service.env, service.con
    declined = cli(env, "set-reading", "5", "279.97", stdin="n\n")
    assert declined.code == 1 and "Nothing changed." in declined.out
    assert "Meter 5 (Meter 5) reads 0.000 kWh (0 pulses)." in declined.out
    assert "It will read 279.970 kWh (279970 pulses at 1000 pulses/kWh), +279.970 kWh." in (
        declined.out
    )
    assert reading(con, 5) == 0
    confirmed = cli(env, "set-reading", "5", "279.97", stdin="y\n")
    assert confirmed.code == 0, confirmed
    assert "Set it? [y/N] Stored: meter 5 reads 279.970 kWh." in confirmed.out
    assert reading(con, 5) == Decimal("279.97")
    unasked = cli(env, "set-reading", "5", "280", "--yes")
    assert unasked.code == 0 and "Set it?" not in unasked.out
    assert reading(con, 5) == 280
    typed = con.run("SELECT count(*) FROM consumption WHERE meter_no = 5 AND typed_in")
    assert typed[0][0] == 2


def test_push_waits_for_the_sheets_answer(service: Service):
    env, sheet = service.env, service.sheet
    pushed = cli(env, "push")
    assert pushed.code == 0, pushed
    # two decimals, as the sheet gets them
    assert "the sheet answered HTTP 200 (0.00,0.00,0.00,0.00,280.00,0.00,0.00)" in pushed.out
    (line,) = sheet.got()
    assert "function=updateSheet&dataString=0.00,0.00,0.00,0.00,280.00,0.00,0.00" in line
    sheet.script.append(Reply(200, "ERROR: the sheet is busy, try again"))
    failed = cli(env, "push")
    assert failed.code == 1
    busy = "HTTP 200, the script failed: 'ERROR: the sheet is busy, try again'"
    assert f"energy-worker push: the push failed: {busy} (the service tries again at" in failed.err
    data = json.loads(cli(env, "status", "--json").out)
    assert data["pushes"]["pending"] == 1 and data["pushes"]["last_error"] == busy
    assert busy in cli(env, "status").out
    assert data["ok"]  # failing for more than a day would need attention


def test_push_says_so_when_the_service_has_no_sheet_url(service: Service):
    stack = service.stack
    stack.rpc().stopProcess("pusher")
    env = {k: v for k, v in stack.env.items() if k != "GOOGLE_WEBHOOK_URL"}
    pusher = Proc("pusher", {**env, "PYTHONPATH": str(REPO / "services")}, service.tmp)
    try:
        pusher.wait_for_log("GOOGLE_WEBHOOK_URL is not set")
        command_env = {k: v for k, v in service.env.items() if k != "GOOGLE_WEBHOOK_URL"}
        ignored = cli(command_env, "push", "--timeout", "20")
        assert ignored.code == 1, ignored
        assert ignored.err == (
            "energy-worker push: the service ignored the request: GOOGLE_WEBHOOK_URL is not "
            "set for it, nor in this command's environment (set it in .env, then docker "
            "compose up -d; see docs/GUIDE.md)\n"
        )
    finally:
        pusher.close()
        stack.rpc().startProcess("pusher")
        wait_until(stack.all_running, 30, 0.1, "every program RUNNING")


def test_deadletters_list_requeue_and_clear(service: Service):
    env, r, stack = service.env, service.r, service.stack
    r.set("bogus", "x")
    r.set("channel:8:timestamp", "4242")  # meter 8 is not configured yet
    wait_until(lambda: r.exists("bogus", "channel:8:timestamp") == 0, 10, 0.01, "rejected")
    listing = cli(env, "deadletters")
    assert listing.code == 0
    assert listing.out.startswith("2 dead letters, newest first (Europe/Copenhagen):\n")
    assert re.search(r"^ +\d  \S+ \S+  bogus = x: unknown key$", listing.out, re.M)
    assert re.search(
        r"^ +\d  \S+ \S+  channel:8:timestamp = 4242: meter 8 is not configured$",
        listing.out,
        re.M,
    )
    entries = json.loads(cli(env, "deadletters", "--json").out)["entries"]
    number = {e["key"]: str(e["number"]) for e in entries}
    status = cli(env, "status")
    assert status.code == 1 and "2 keys rejected in the last hour" in status.out

    refused = cli(env, "deadletters", "--requeue", number["bogus"])
    assert refused.code == 2 and "rejected because unknown key" in refused.err
    early = cli(env, "deadletters", "--requeue", number["channel:8:timestamp"])
    assert early.code == 2 and "meter 8 is still not configured" in early.err

    # Meter 8 is configured: the meter config, PostgreSQL (the set-up's part), the programs
    service.meters_file.write_text(service.meters_file.read_text() + METER_8)
    meters_store.upsert_meters(service.con, config.load_meters(service.meters_file))
    for program in ("router", "processor"):  # supervisorctl restart router processor
        stack.rpc().stopProcess(program)
        stack.rpc().startProcess(program)
    wait_until(stack.all_running, 30, 0.1, "every program RUNNING")
    requeued = cli(env, "deadletters", "--requeue", number["channel:8:timestamp"])
    assert requeued.code == 0, requeued
    assert requeued.out == (
        f"Re-queued entry {number['channel:8:timestamp']}: channel:8:timestamp = 4242\n"
        "The service took it.\n"
    )
    wait_until(lambda: counted(service.con).get(8) == (1, 0), 15, 0.05, "meter 8's pulse")
    left = json.loads(cli(env, "deadletters", "--json").out)
    assert [e["key"] for e in left["entries"]] == ["bogus"]

    kept = cli(env, "deadletters", "--clear", stdin="n\n")
    assert kept.code == 1 and "Delete all 1 dead letter? [y/N] Nothing deleted." in kept.out
    assert r.llen("energy-worker:deadletter") == 1
    cleared = cli(env, "deadletters", "--clear", "--yes")
    assert cleared.code == 0 and cleared.out == "Deleted 1 dead letter.\n"
    assert "No dead letters" in cli(env, "deadletters").out
    assert cli(env, "status").code == 0
    assert not os.path.exists(service.tmp / "run" / "stop-requested")
