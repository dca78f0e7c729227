"""The `energy-worker` command without a running service: its installation, its help, its
arguments, the rules and formats it uses, the history query behind "pulses today", how it finds
`make run`'s servers, and its one-line errors (real servers, or real closed ports). The
end-to-end tests against the supervised service are test_cli_stack.py."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path

import pytest
import redis

from cli_support import SCRIPT, cli, cli_process
from energy_worker.adapters import config, work_queue
from energy_worker.adapters.sql import reports
from energy_worker.cli import health, make_run, parser, push, show, simulate
from energy_worker.cli.deadletters import Entry
from energy_worker.cli.session import Session
from energy_worker.core.domain import at_time
from energy_worker.programs.processor import Processor
from helpers import REPO, T0, enqueue, pulses, wait_until, write_ini

METERS = str(REPO / "services" / "energy_worker" / "meters.toml")
COMMANDS = ("status", "energy", "simulate", "deadletters", "push", "set-reading")


def closed_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


# --- installation -----------------------------------------------------------------------------


def test_make_installs_the_console_script_from_this_checkout():
    # `make run`'s set-up (the run stamp, which `make test` builds on) installs the project
    # editable: the console script runs this checkout's code.
    # (the build's egg-info in services/ is found too: the installed one has direct_url.json)
    (installed,) = [
        d for d in metadata.distributions(name="energy-worker") if d.read_text("direct_url.json")
    ]
    (entry,) = [e for e in installed.entry_points if e.group == "console_scripts"]
    assert (entry.name, entry.value) == ("energy-worker", "energy_worker.cli:main")
    assert SCRIPT.exists()
    direct = json.loads(installed.read_text("direct_url.json") or "")
    assert direct["url"] == REPO.as_uri() and direct["dir_info"].get("editable") is True
    done = cli_process({"PATH": "/usr/bin:/bin"}, "--help")
    assert done.code == 0 and "set-reading" in done.out


def test_help_imports_no_server_library():
    # The command must start fast on a Pi: --help, and the parser of every subcommand, import
    # neither redis-py nor pg8000 nor supervisor.
    code = (
        "import sys; from energy_worker.cli import parser; parser.build(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'pg8000', 'supervisor', 'requests')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_explains_itself_and_its_exit_status(command: str):
    result = cli({}, command, "--help")
    assert result.code == 0
    assert f"usage: energy-worker {command}" in result.out
    assert "exit status" in result.out


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("279.97", "279.97"), ("0", "0.00"), ("99999.99", "99999.99"), ("12.5", "12.50"),
     ("1e2", "100.00"), ("7.000", "7.00")],
)  # fmt: skip
def test_a_reading_is_kwh_with_at_most_two_decimals(text: str, value: str):
    assert parser.reading(text) == Decimal(value)


@pytest.mark.parametrize("text", ["-1", "100000", "1.234", "abc", "NaN", "inf", "1e9"])
def test_a_reading_out_of_range_is_refused(text: str):
    with pytest.raises(Exception, match="not a reading"):
        parser.reading(text)


def test_a_wrong_argument_is_one_line_and_exit_2():
    result = cli({}, "set-reading", "1", "1.234")
    assert result.code == 2
    assert result.err.count("\n") == 1, result.err
    assert "at most 2 decimals" in result.err and "--help" in result.err
    assert cli({}, "simulate", "--meters", "1,1").code == 2
    assert cli({}, "simulate", "--power", "0").code == 2
    assert cli({}, "bogus").code == 2


def test_an_unknown_meter_is_exit_2_before_any_server_is_asked():
    env = {"METERS_CONFIG": METERS, "REDIS_PORT": str(closed_port())}
    for args in (["set-reading", "9", "1"], ["simulate", "--meters", "1,9"]):
        result = cli(env, *args)
        assert result.code == 2, result
        assert result.err.strip() == (
            f"energy-worker {args[0]}: meter 9 is not configured (configured: "
            f"1, 2, 3, 4, 5, 6, 7; meter config {METERS})"
        )
    assert cli(env, "simulate", "--meters", "1,2", "--power", "1,2,3").code == 2


# --- unreachable servers ----------------------------------------------------------------------


def test_an_unreachable_redis_is_one_line_and_exit_2(tmp_path: Path):
    port = closed_port()
    env = {"METERS_CONFIG": METERS, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)}
    for args in (["status"], ["simulate"], ["set-reading", "1", "2"]):
        result = cli(env, *args)
        assert result.code == 2, result
        line = result.err.strip()
        assert "\n" not in line
        assert line.startswith(f"energy-worker {args[0]}: Redis at 127.0.0.1:{port}/0 does not")
    # the console script says the same
    done = cli_process({**env, "PATH": "/usr/bin:/bin"}, "status")
    assert done.code == 2 and "Redis at" in done.err and done.err.count("\n") == 1


def test_an_unreachable_postgres_is_one_line_and_exit_2(
    redis_db: config.RedisSettings, tmp_path: Path
):
    port = closed_port()
    settings = config.PostgresSettings("127.0.0.1", port, "energy", "me", "pw")
    ini = write_ini(settings, tmp_path / "postgres.ini")
    env = {
        "METERS_CONFIG": METERS,
        "POSTGRES_INI": str(ini),
        "REDIS_HOST": redis_db.host,
        "REDIS_PORT": str(redis_db.port),
        "REDIS_DB": str(redis_db.db),
    }
    result = cli(env, "status")
    assert result.code == 2
    assert result.err.startswith(
        f"energy-worker status: PostgreSQL at me@127.0.0.1:{port}/energy does not answer"
    )
    assert result.err.count("\n") == 1 and "pw" not in result.err
    missing = cli({**env, "POSTGRES_INI": str(tmp_path / "none.ini")}, "status")
    assert missing.code == 2 and "cannot read" in missing.err


def test_the_command_reads_postgres_from_the_environment_as_the_service_does(
    pg: config.PostgresSettings, redis_db: config.RedisSettings, tmp_path: Path
):
    """POSTGRES_HOST and the others, as entrypoint.sh reads them, with no ini anywhere."""
    secret = tmp_path / "postgres_password"
    secret.write_text(f"{pg.password or 'unused-by-trust'}\n")
    env = {
        "METERS_CONFIG": METERS,
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_DB": pg.database,
        "POSTGRES_USER": pg.user,
        "POSTGRES_PASSWORD_FILE": str(secret),
        "REDIS_HOST": redis_db.host,
        "REDIS_PORT": str(redis_db.port),
        "REDIS_DB": str(redis_db.db),
    }
    result = cli(env, "status", "--json")
    assert result.code in (0, 1), result  # it looked (whatever it found)
    assert "cannot read" not in result.err


# --- finding `make run`'s servers -------------------------------------------------------------


def test_the_settings_of_make_run_are_adopted_when_nothing_names_a_server(tmp_path: Path):
    env = {
        "POSTGRES_INI": "var/postgres.ini",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": "40001",
        "REDIS_PASSWORD": "secret",
        "ENERGY_WORKER_RUN_DIR": str(tmp_path / "run"),
        "POSTGRES_PASSWORD": "secret",
    }
    written = make_run.write(tmp_path, env)
    data = json.loads(written.read_text())
    assert "secret" not in written.read_text()
    assert Path(data["POSTGRES_INI"]).is_absolute()
    shell = {"ENERGY_WORKER_VAR": str(tmp_path), "REDIS_DB": "3"}
    assert make_run.adopt(shell) == written
    assert shell["REDIS_PORT"] == "40001" and shell["REDIS_DB"] == "3"  # its own setting wins
    # a server named in the environment is that one; the other is still make run's
    named = {"ENERGY_WORKER_VAR": str(tmp_path), "REDIS_HOST": "redis-db"}
    assert make_run.adopt(named) == written and "REDIS_PORT" not in named
    assert named["POSTGRES_INI"] == data["POSTGRES_INI"]
    both = {"ENERGY_WORKER_VAR": str(tmp_path), "REDIS_PORT": "1", "POSTGRES_HOST": "db"}
    assert make_run.adopt(both) is None and "POSTGRES_INI" not in both
    assert make_run.adopt({"ENERGY_WORKER_VAR": str(tmp_path / "nothing")}) is None


def test_a_make_run_that_is_not_running_is_named_in_the_error(tmp_path: Path):
    make_run.write(
        tmp_path,
        {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(closed_port()), "METERS_CONFIG": METERS},
    )
    result = cli({"ENERGY_WORKER_VAR": str(tmp_path)}, "deadletters")
    assert result.code == 2
    assert f"the servers of `make run`, from {tmp_path / 'make-run.json'}" in result.err


# --- formats and rules (pure) -----------------------------------------------------------------


def test_ages_and_readings_as_a_person_reads_them():
    assert [show.age(s) for s in (0.42, 12.4, 300, 3 * 3600 + 120, 2 * 86400 + 4 * 3600)] == [
        "0.4 s", "12 s", "5 min", "3 h 2 min", "2 d 4 h"
    ]  # fmt: skip
    assert show.kwh(Decimal("0.01"), 1000) == "0.010"
    assert show.kwh(Decimal("279.97"), 100) == "279.97"
    assert show.kwh(Decimal("0.0005"), 2000) == "0.0005"
    assert show.kwh(Decimal("1"), 800) == "1.00000"
    assert show.kwh(Decimal("0.333333333"), 3) == "0.333333333"
    assert show.kwh(Decimal("12.5")) == "12.50"
    assert show.table(["a", "n"], [["x", "1"], ["yy", "22"]], [False, True]) == (
        "a    n\nx    1\nyy  22"
    )


def test_the_bound_now_is_shown_only_below_the_last_power():
    assert health.power_at_most(2000, 17250, 1000, 1800) is None  # the period: its power holds
    assert health.power_at_most(2000, 17250, 1000, 1900) == 1895  # no pulse yet: less
    assert health.power_at_most(2000, 17250, 1000, 60_000) == 60  # a minute: at most 60 W
    assert health.power_at_most(None, 17250, 1000, 100) is None  # none known: the maximum holds
    assert health.power_at_most(None, 17250, 1000, 600_000) == 6
    assert health.power_at_most(2000, 17250, 1000, -5) is None  # pulses not yet committed


def test_a_meter_is_silent_when_much_longer_quiet_than_its_power_implies():
    assert not health.meter_silent(2000, 1000, 3000)  # under an hour
    assert health.meter_silent(2000, 1000, 3700)  # 2000 W: a pulse every 1.8 s
    assert not health.meter_silent(10, 1000, 3700)  # 10 W: a pulse every 6 min; 100 x is 10 h
    assert health.meter_silent(10, 1000, 36_100)
    assert not health.meter_silent(None, 1000, 10**9)  # no power reading implies nothing


def test_the_other_rules():
    assert not health.backlog_stuck(None) and not health.backlog_stuck(59)
    assert health.backlog_stuck(61)
    assert not health.push_failing(3600) and health.push_failing(86_401)
    # not committing: work waits, and the last commit is older than three intervals (>= 5 s)
    assert health.not_committing(10, 16, 16, 5) and health.not_committing(1, None, None, 5)
    assert not health.not_committing(0, 3600, None, 5)  # idle: nothing waits
    assert not health.not_committing(10, 14, 16, 5)  # committed within three intervals
    assert not health.not_committing(1, 3600, 2, 5)  # one pulse after an idle hour: just now
    assert health.not_committing(1, 6, 6, 0.2) and not health.not_committing(1, 4, 6, 0.2)
    states = {"router": "RUNNING", "processor": "STOPPED", "a": "FATAL", "b": "STARTING"}
    assert health.not_running(states) == [
        ("a", "FATAL"),
        ("processor", "STOPPED"),
    ]


def test_the_simulated_arduino_pulses_at_the_period_of_its_power():
    assert simulate.period_ms(2000, 1000) == 1800
    assert simulate.period_ms(500, 1000) == 7200
    assert simulate.pulses_in(60, 1800) == 34  # one at the start, then every 1.8 s
    assert simulate.pulses_in(2, 500) == 4
    assert simulate.percentile([], 0.5) is None
    assert simulate.percentile([float(v) for v in range(1, 101)], 0.99) == 99
    assert simulate.percentile([3.0, 1.0, 2.0], 0.5) == 2


def test_dead_letter_entries_of_any_shape_are_shown():
    entry = Entry.parse(b'{"key": "x", "value": "1", "reason": "unknown key", "at": 1000}')
    assert (entry.key, entry.value, entry.reason, entry.at_ms) == ("x", "1", "unknown key", 1000)
    odd = Entry.parse(b"not json \xff")
    assert odd.reason == "not an entry" and odd.key.startswith("not json")


# --- pulses today, from the history -----------------------------------------------------------


def test_pulses_since_midnight_count_pulses_not_typed_in_readings(
    fresh_pg: config.PostgresSettings, redis_db: config.RedisSettings
):
    r = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    r.flushdb()
    midnight = T0 + 4000
    # meter 1: three pulses before midnight, then a typed-in reading and three more
    pulses(r, 1, [1000, 2800, 4600])
    enqueue(r, "channel:1:metercount", "50000", T0 + 5000)
    pulses(r, 1, [6400, 8200, 10000], start_ms=T0 + 5400)
    # meter 2: its history starts after midnight; meter 3: no history at all
    pulses(r, 2, [500, 1500], start_ms=T0 + 6000)
    processor = Processor(r, fresh_pg, commit_interval=0.05, durable_after=0.0)
    try:
        wait_until(lambda: processor.run_once() or r.llen("energy-worker:work") == 0, 15)
        processor.run_once()
    finally:
        processor.session.close()
        r.close()
    from energy_worker.adapters import postgres  # noqa: PLC0415

    con = postgres.connect(fresh_pg, "energy-worker tests")
    try:
        since = at_time(midnight)
        assert reports.pulses_since(con, [1, 2, 3], since) == {1: 3, 2: 2, 3: 0}
        assert reports.pulses_since(con, [1], since - timedelta(hours=1)) == {1: 6}
    finally:
        con.close()


def test_a_full_buffer_loses_pulses_and_the_report_says_so(r: redis.Redis, capsys):
    # Nothing takes the keys here (no router): the first pulse stays in flight, four more wait
    # in the buffer, and every further one is lost, as on the Arduino.
    meter = config.load_meters(METERS)[1]
    put = simulate.Input(meter, 36_000, 100.0, "channel:1:timestamp", 1000.0, 5000)
    arduino = simulate.Arduino(r, [put], repeat=0)
    arduino.make_pulses(1000.45, 1001.0)  # at 1000.0, 1000.1 ... 1000.4: five, all buffered
    arduino.send()
    assert r.get("channel:1:timestamp") == b"5000" and len(put.buffer) == 4
    arduino.make_pulses(1000.95, 1001.0)  # five more: one fits, four are lost
    arduino.look_at_flights()
    arduino.send()  # "102 Processing": the key is still there
    assert (put.made, put.lost, len(put.buffer), put.sent) == (10, 4, 5, 0)
    assert [p.millis for p in put.buffer] == [5100, 5200, 5300, 5400, 5500]
    assert simulate.report(arduino, 1.0, None, None, 0.0) == 1
    out = capsys.readouterr().out
    assert "Not every pulse arrived: 4 lost: the buffer of 5 was full; 5 still in the buffer" in (
        out
    )
    assert "1 key not yet taken by the service (is it running?)" in out
    r.delete("channel:1:timestamp")  # the service took it
    arduino.look_at_flights()
    assert put.sent == 1 and len(arduino.clear_ms) == 1


def test_the_push_hint_names_what_works_where_the_command_runs(tmp_path: Path):
    make_run.write(tmp_path, {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "40001"})
    under_make_run = push.ignored(Session({"ENERGY_WORKER_VAR": str(tmp_path)}))
    assert "set it in .env, then stop `make run` and start it again" in under_make_run
    nothing = {"ENERGY_WORKER_VAR": str(tmp_path / "none")}  # in the container: no make run
    in_the_container = push.ignored(Session({"REDIS_HOST": "redis-db", **nothing}))
    assert "set it in .env, then docker compose up -d" in in_the_container


@pytest.mark.slow
def test_status_says_not_committing_while_work_waits_and_no_commit_comes(
    fresh_pg: config.PostgresSettings, redis_db: config.RedisSettings, tmp_path: Path
):
    """A pulse has waited 30 s and the last commit is a minute old, with a commit due every
    5 s: the processor is not committing, and status exits 1. A commit just now: all well."""
    from energy_worker.adapters import postgres  # noqa: PLC0415
    from energy_worker.adapters.work_queue import now_ms  # noqa: PLC0415

    r = redis.Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db)
    r.execute_command("FLUSHDB")
    con = postgres.connect(fresh_pg, "energy-worker tests")
    try:
        enqueue(r, "channel:1:timestamp", "1000", now_ms() - 30_000)
        con.run("UPDATE worker_progress SET updated_at = now() - interval '1 minute'")
        env = {
            "METERS_CONFIG": METERS,
            "POSTGRES_INI": str(write_ini(fresh_pg, tmp_path / "postgres.ini")),
            "REDIS_HOST": redis_db.host,
            "REDIS_PORT": str(redis_db.port),
            "REDIS_DB": str(redis_db.db),
            "COMMIT_INTERVAL": "5",
        }
        stuck = cli(env, "status")
        assert stuck.code == 1, stuck
        assert "; not committing" in stuck.out
        assert "  - the processor is not committing: 1 item(s) wait" in stuck.out
        assert json.loads(cli(env, "status", "--json").out)["pipeline"]["committing"] is False
        con.run("UPDATE worker_progress SET updated_at = now()")
        assert "not committing" not in cli(env, "status").out
    finally:
        con.close()
        r.close()


def test_dead_letters_are_printed_escaped(r: redis.Redis, redis_db: config.RedisSettings):
    """An entry is Redis-borne text: escape sequences and line breaks in it are shown escaped,
    never sent to the terminal (it used to: `deadletters` printed raw ESC sequences)."""
    forged = {"key": "k\x1b]0;owned\x07", "value": "v\x1b[2J\nfake line", "reason": "r\x1b[31m"}
    r.lpush(work_queue.DEADLETTER, json.dumps({**forged, "at": T0}))
    env = {
        "REDIS_HOST": redis_db.host,
        "REDIS_PORT": str(redis_db.port),
        "REDIS_DB": str(redis_db.db),
        "METERS_CONFIG": METERS,
    }
    listing = cli(env, "deadletters")
    assert listing.code == 0, listing.err
    assert "\x1b" not in listing.out and "\x07" not in listing.out
    (line,) = [ln for ln in listing.out.splitlines() if " = " in ln]
    assert line.endswith("k\\x1b]0;owned\\x07 = v\\x1b[2J\\nfake line: r\\x1b[31m")
