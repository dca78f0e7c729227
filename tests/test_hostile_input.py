"""Hostile input through every write path: nothing wedges the processor, nothing crashes a
program, and no text reaches PostgreSQL in a way that changes it (a key named `null` once
stopped all counting).

One table of hostile strings (HOSTILE) runs through the router and the processor into
PostgreSQL (as key names, as values of every kind, as every field of a forged work item), into
the meter config (adapters/sql/meters.py), and through the pusher's writes (test_pusher.py imports
it for the push requests and the webhook's answers). Each must be stored exactly as meant (text
the router made printable stays so), or rejected with a dead letter: never a statement error.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energy_worker.adapters import config, postgres, schema, work_queue
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.adapters.sql import totals as pusher_store
from energy_worker.core import ledger, totals
from energy_worker.core.domain import DeadLetter, Item, printable
from energy_worker.programs.processor import Processor
from energy_worker.programs.publisher import ha_discovery
from energy_worker.programs.publisher import settings as publisher_settings
from energy_worker.programs.publisher.broker import Broker
from energy_worker.programs.pusher import Pusher, outbox
from energy_worker.programs.pusher import settings as pusher_settings
from energy_worker.programs.router import Router
from energy_worker.runtime import program
from helpers import METERS, REPO, T0, enqueue, pulses, status, wait_until
from sheet_server import sheet_server

METERS_FILE = REPO / "services" / "energy_worker" / "meters.toml"

# The table: each one as bytes, as Redis holds it (invalid UTF-8 the way the webhook could
# write it, which the router escapes).
HOSTILE: list[bytes] = [
    b"null",
    b"NULL",
    b"Null",
    b"",
    b"'",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"{}",
    b",",
    b'{"a",NULL,null}',
    b"\x00",
    b"a\x00b",
    b"\xff\xfe\xc3(",
    b"x" * (1 << 20),
]
HOSTILE_IDS = [repr(h[:12]) + (f"..{len(h)}" if len(h) > 12 else "") for h in HOSTILE]


def run_to_stop(p: Processor, timeout: float = 30.0) -> None:
    """Run until the stop item is committed; fail (instead of hanging) if it never is."""
    wait_until(p.run_once, timeout, interval=0, what="the processor to commit the stop")


def route(r: Any, key: bytes, value: bytes, at_ms: int = T0) -> work_queue.Routed:
    r.set(key, value)
    return work_queue.Queues(r, METERS).route(key, at_ms=at_ms)


def dead_letters(sql) -> list[tuple[str, str, str]]:
    return [
        tuple(row) for row in sql.run("SELECT key, value, reason FROM dead_letters ORDER BY id")
    ]


def redis_dead_letters(r: Any) -> list[tuple[str, str, str]]:
    """The router's own copies, oldest first: what PostgreSQL must hold too."""
    entries = [json.loads(e) for e in reversed(r.lrange(work_queue.DEADLETTER, 0, -1))]
    return [(e["key"], e["value"], e["reason"]) for e in entries]


def test_null_as_a_key_and_as_a_pulse_value_is_a_dead_letter_not_a_wedge(make_processor, r, sql):
    """`SET null 1` and `SET channel:1:timestamp null`: the two writes that stopped all
    counting. Each is a dead letter; the pulses around them are counted."""
    pulses(r, 2, [1000, 2800])
    assert route(r, b"null", b"1", T0 + 3000).outcome == "rejected"
    assert route(r, b"channel:1:timestamp", b"null", T0 + 3001).outcome == "rejected"
    pulses(r, 2, [4600, 6400], start_ms=T0 + 4600)
    enqueue(r, "stop", "true")
    run_to_stop(make_processor())
    assert dead_letters(sql) == [
        ("null", "1", "unknown key"),
        ("channel:1:timestamp", "null", "value is not a whole number"),
    ]
    assert status(sql, 2)["meter_counts"] == 4


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_text_through_the_router_and_the_processor(make_processor, r, sql, text):
    """As a key name, and as the value of every kind of key: stored in dead_letters exactly as
    the router keeps it in Redis, with legit pulses around it counted."""
    pulses(r, 3, [1000])
    names = [b"channel:1:timestamp", b"channel:1:metercount", b"powerup", b"pushtogoogle",
             b"debug", b"stop"]  # fmt: skip
    assert route(r, text, b"1", T0 + 1).outcome == "rejected"  # the empty name too
    expected_rejections = 1
    for name in names:
        result = route(r, name, text, T0 + 2)
        if name == b"debug" and text.lower() in (b"true", b"false"):
            continue
        assert result.outcome == "rejected", (name, result)
        expected_rejections += 1
    pulses(r, 3, [2800], start_ms=T0 + 1800)
    enqueue(r, "stop", "true")
    run_to_stop(make_processor())
    assert status(sql, 3)["meter_counts"] == 2
    stored = dead_letters(sql)
    assert len(stored) == expected_rejections
    assert stored == redis_dead_letters(r)


FORGED_FIELDS = ["key", "v", "reason"]


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_text_in_every_field_of_a_forged_item(make_processor, r, sql, text):
    """Items written straight onto the work list (by anyone who can write Redis): each becomes
    a dead letter, in PostgreSQL as printable text; the pulses behind them are committed."""
    decoded = text.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace")
    as_text = decoded.decode("utf-8")
    seq = 10**6
    forged = []
    for field in FORGED_FIELDS:  # a rejected key's record, with the text in one field
        data = {"e": "e", "s": seq, "k": "r", "v": "v", "key": "k", "reason": "r", "at": T0}
        data[field] = as_text
        forged.append(json.dumps(data))
        seq += 1
    # A pulse whose value is the text, and an item whose epoch is the text.
    forged.append(json.dumps({"e": "e", "s": seq, "k": "t", "m": 1, "v": as_text, "at": T0,
                              "key": "channel:1:timestamp"}))  # fmt: skip
    forged.append(json.dumps({"e": as_text, "s": 1, "k": "t", "m": 1, "v": "5", "at": T0,
                              "key": "channel:1:timestamp"}))  # fmt: skip
    forged.append(text)  # the raw bytes as an item
    pulses(r, 4, [1000])
    r.rpush(work_queue.WORK, *forged)
    pulses(r, 4, [2800], start_ms=T0 + 1800)
    enqueue(r, "stop", "true")
    run_to_stop(make_processor())
    assert status(sql, 4)["meter_counts"] == 2
    stored = dead_letters(sql)
    # The three rejected-key records, as printable text of what they carried.
    for field, (key, value, reason) in zip(FORGED_FIELDS, stored[:3], strict=False):
        got = {"key": key, "v": value, "reason": reason}[field]
        assert got == printable(as_text), field
    # None of the forged items was lost silently: each is a dead letter somewhere.
    assert len(stored) + len(r.lrange(work_queue.DEADLETTER, 0, -1)) >= len(forged)
    assert r.llen(work_queue.WORK) == 0 and r.llen(work_queue.PROCESSING) == 0


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_meter_names_are_stored_exactly_or_refused(sql, tmp_path: Path, text):
    """The meter config: a name is stored byte for byte, or the config is refused with one
    line (a NUL byte, which PostgreSQL cannot hold; text that is not UTF-8)."""
    source = METERS_FILE.read_text(encoding="utf-8")
    body = source[source.index("[[meter]]") :]
    first = body[: body.index("[[meter]]", 1)]
    path = tmp_path / "meters.toml"
    name = text.decode("utf-8", "surrogateescape")
    quoted = json.dumps(name, ensure_ascii=False)  # a TOML basic string reads JSON's escapes
    toml = re.sub(r"(?m)^name = .*$", lambda _m: f"name = {quoted}", first, count=1)
    path.write_bytes(toml.encode("utf-8", "surrogateescape"))
    try:
        meters = config.load_meters(path)
    except config.ConfigError as exc:
        refusable = "\x00" in name or len(name) > config.MAX_NAME_CHARS
        assert refusable or any("\udc80" <= c <= "\udcff" for c in name), exc
        return
    meter_store.upsert_meters(sql, meters)
    ((stored,),) = sql.run("SELECT meter_name FROM meter_metadata WHERE meter_no = 1")
    assert stored == (name or "Meter 1")


def test_a_statement_refused_for_one_item_dead_letters_that_item_and_commits_the_rest(
    fresh_pg, r, caplog
):
    """PostgreSQL refuses a pulse (here: a constraint added by hand). The batch is split, the
    culprit kept in Redis's dead-letter list with the error, everything else committed, and
    the stop behind it still ends the processor, without waiting it out as an outage."""
    con = postgres.connect(fresh_pg, "tests")
    con.run(
        "ALTER TABLE consumption ADD CONSTRAINT refuse_4600 "
        "CHECK (pulse_time_stamp IS DISTINCT FROM 4600)"
    )
    pulses(r, 1, [1000, 2800, 4600, 6400, 8200])
    pulses(r, 2, [1000, 2800, 4600])
    enqueue(r, "stop", "true")
    p = Processor(r, fresh_pg, commit_interval=0.05, durable_after=0.0)
    try:
        run_to_stop(p, 15)
    finally:
        p.session.close()
    counts = dict(con.run("SELECT meter_no, meter_counts FROM meter_status WHERE meter_no < 3"))
    # Meter 1's row of 4600 moved on to 8200 within the batch (the deadband's moving row), so
    # only meter 2's 4600, the last row of its run, is refused.
    assert counts == {1: 5, 2: 2}
    ((letter,),) = [[json.loads(e)] for e in r.lrange(work_queue.DEADLETTER, 0, -1)]
    assert (letter["key"], letter["value"]) == ("channel:2:timestamp", "4600")
    assert "23514" in letter["reason"]
    assert con.run("SELECT key, value FROM dead_letters") == [["channel:2:timestamp", "4600"]]
    assert "retrying with backoff" not in caplog.text
    con.close()


@pytest.mark.slow
def test_a_refusal_that_is_not_the_data_is_waited_out_without_spinning_or_the_schema(
    make_processor, r, sql, caplog, monkeypatch
):
    """A refusal no item causes (a read-only session) is waited out with a growing wait and
    one log line; the connection is kept, so the schema's version is not looked at again."""
    checked: list[int] = []
    real_check = schema.check

    def counting_check(*args, **kwargs):
        checked.append(1)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(schema, "check", counting_check)
    p = make_processor()
    pulses(r, 5, [1000])
    wait_until(lambda: p.run_once() or status(sql, 5)["meter_counts"] == 1)
    p.session.connection().run("SET default_transaction_read_only = on")
    attempts: list[int] = []
    real_commit = p.commit

    def counting_commit(*args, **kwargs):
        attempts.append(1)
        return real_commit(*args, **kwargs)

    p.commit = counting_commit  # type: ignore[method-assign,unused-ignore]
    pulses(r, 5, [2800], start_ms=T0 + 1800)
    wait_until(lambda: p.run_once() or p.pg_outage.delay >= 3.2, 20)
    # 0.2 + 0.4 + 0.8 + 1.6 s of waits: five tries at most, not three a second
    assert len(attempts) <= 6
    assert caplog.text.count("refused a statement") == 1
    p.session.connection().run("SET default_transaction_read_only = off")
    wait_until(lambda: p.run_once() or status(sql, 5)["meter_counts"] == 2, 20)
    assert checked == [1]
    assert "PostgreSQL is back" in caplog.text


def test_the_processor_survives_every_kind_of_forged_item(make_processor, r, sql, caplog):
    """What crash-looped it before: a number too large for a float, JSON nested too deep, a
    pulse value that is no number, an instant past the year 9999. Each is a dead letter with
    its reason; the pulses behind them are counted."""
    caplog.set_level(logging.INFO)
    forged = [
        b'{"s":1e400}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(
            {"e": "e", "s": 7, "k": "t", "m": 1, "v": "abc", "at": T0, "key": "channel:1:timestamp"}
        ).encode(),
        json.dumps(
            {"e": "e", "s": 8, "k": "t", "m": 1, "v": "5", "at": 1e17, "key": "channel:1:timestamp"}
        ).encode(),
        json.dumps(
            {
                "e": "e",
                "s": 9,
                "k": "t",
                "m": 1,
                "v": "5",
                "at": 10**17,
                "key": "channel:1:timestamp",
            }
        ).encode(),
        json.dumps(
            {
                "e": "e",
                "s": 10,
                "k": "g",
                "v": "true",
                "at": T0,
                "key": "x\nrouter INFO stop: \u001b[2J",
            }
        ).encode(),
        b'{"e":"e","s":11,"k":"c","m":1,"v":"99999999999","at":1,"key":"k"}',
        b'{"e":"e","s":true,"k":"t","m":1,"v":"5","at":1,"key":"k"}',
        b"\xff\xfe",
        b"",
    ]
    pulses(r, 6, [1000])
    r.rpush(work_queue.WORK, *forged)
    pulses(r, 6, [2800], start_ms=T0 + 1800)
    enqueue(r, "stop", "true")
    run_to_stop(make_processor())
    assert status(sql, 6)["meter_counts"] == 2
    assert r.llen(work_queue.DEADLETTER) == len(forged)
    reasons = sql.run("SELECT reason FROM dead_letters ORDER BY id")
    assert [row[0] for row in reasons] == [
        "value is not a whole number",
        "the processor does not handle kind PUSH",
        "value is above 9999999",
    ]
    # A key is only ever logged quoted and escaped: no forged log line, no escape sequence.
    assert "\x1b" not in caplog.text
    assert "cannot use 'x\\nrouter INFO stop: \\x1b[2J'" in caplog.text


# --- decoders, fed arbitrary bytes --------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["e", "s", "k", "m", "v", "at", "key", "reason"]) | st.text(max_size=3),
            children,
            max_size=8,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | JSONISH.map(lambda v: json.dumps(v).encode()))
def test_an_item_decodes_or_says_why_whatever_the_bytes(raw: bytes):
    try:
        item = Item.decode(raw)
    except ValueError as exc:
        assert str(exc)
        return
    # What decodes can be planned and kept as a dead letter without an error.
    plan = ledger.plan_batch([item], {}, {}, {}, [1])
    for letter in plan.dead_letters:
        assert isinstance(letter, DeadLetter)
        assert "\x00" not in letter.key + letter.value + letter.reason


# --- the property: arbitrary keys and values, legit pulses between them --------------------

INTERVAL = 0.5  # the commit interval of the property's processor


@pytest.mark.slow
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=40)
            | st.sampled_from(
                [b"null", b"channel:1:timestamp", b"channel:2:metercount", b"powerup"]
            ),
            st.binary(max_size=40) | st.sampled_from([b"null", b"NULL", b"", b"\x00"]),
        ),
        max_size=12,
    )
)
def test_arbitrary_keys_and_values_never_stop_the_counting(pg, r, redis_db, hostile):
    """Arbitrary byte strings as key names and values, through router and processor into
    PostgreSQL, with legit pulses of meter 7 between them: every legit pulse is counted
    within two commit intervals of being routed."""
    r.execute_command("FLUSHDB")
    con = postgres.connect(pg, "tests")
    try:
        before = con.run("SELECT pulses_counted FROM meter_status WHERE meter_no = 7")[0][0]
        p = Processor(r, pg, commit_interval=INTERVAL, durable_after=0.0)
        router = Router(r, 0, METERS)  # the router program's own handling of a key event
        millis = 1000 + before * 1800
        sent = 0
        try:
            for key, value in hostile:
                if key.startswith(b"energy-worker:") or key.lower() == b"stop":
                    continue  # our own lists are not the webhook's to write; stop ends it all
                r.set(key, value)
                router.handle(key)
                millis += 1800
                r.set(b"channel:7:timestamp", str(millis % 2**32).encode())
                router.handle(b"channel:7:timestamp")
                assert not r.exists(b"channel:7:timestamp")  # routed
                sent += 1
            expected = before + sent

            def counted() -> bool:
                rows = con.run("SELECT pulses_counted FROM meter_status WHERE meter_no = 7")
                return rows[0][0] >= expected

            wait_until(lambda: p.run_once() or counted(), 2 * INTERVAL)
        finally:
            p.session.close()
    finally:
        con.close()


# --- the pusher's writes -------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_text_on_the_push_list(pg, r, sql, text):
    """Forged push requests, the text in each field and as the raw item: each is recorded
    as meant or kept as a dead letter; the request behind them is still sent."""
    as_text = text.decode("utf-8", "surrogateescape").encode("utf-8", "backslashreplace").decode()
    forged = [text]
    for field in ("e", "v", "key"):
        data = {"e": "1700000000000-abcd", "s": 1, "k": "g", "v": "true", "at": 1, "key": "x"}
        data[field] = as_text
        forged.append(json.dumps(data).encode())
    legit = {"e": "1700000000000-abcd", "s": 99, "k": "g", "v": "true", "at": 1, "key": "x"}
    with sheet_server() as server:
        settings = pusher_settings.PushSettings(
            sheet_url=config.secret(server.base + "/exec"), tz=totals.zone("Europe/Copenhagen")
        )
        pusher = Pusher(
            postgres.LockedSession(lambda n: postgres.connect(pg, n), "pusher"), r, settings
        )
        try:
            r.rpush(work_queue.PUSH, *forged, json.dumps(legit).encode())
            for _ in range(len(forged) + 2):
                pusher.step(block=False)
        finally:
            pusher.close()
    assert r.llen(work_queue.PUSH) == 0 and r.llen(work_queue.PUSH_PROCESSING) == 0
    keys = [row[0] for row in sql.run("SELECT dedup_key FROM push_outbox ORDER BY id")]
    assert keys[-1] == "request:1700000000000-abcd:99"
    rejected = r.llen(work_queue.DEADLETTER)
    assert len(keys) + rejected >= len(forged)  # each recorded, or a dead letter


@pytest.mark.parametrize("text", HOSTILE, ids=HOSTILE_IDS)
def test_a_failed_push_keeps_any_answer_as_printable_text(sql, text):
    """Whatever the sheet's server answers, push_outbox.last_error holds it as printable text
    (pusher/outbox.py), never a statement error."""
    answer = text.decode("utf-8", "surrogateescape")
    now = datetime.now(UTC)
    assert pusher_store.record_push(sql, "day:2024-06-01", now, "1.00", now)
    (pending,) = [pusher_store.next_pending(sql)]
    assert pending is not None
    error = printable(answer, outbox.ERROR_CHARS)
    pusher_store.mark_failed(sql, pending.id, 500, error, now)
    assert sql.run("SELECT last_error FROM push_outbox") == [[error]]
    assert "\x00" not in error and len(error) <= 4 * outbox.ERROR_CHARS


# --- the publisher's decoder ---------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64) | st.from_regex(rb"[0-9]{1,20}(\.[0-9]{0,20})?", fullmatch=True))
def test_a_retained_energy_state_is_a_bounded_reading_or_nothing(payload: bytes):
    value = ha_discovery.parse_published(payload)
    if value is not None:
        assert value.is_finite() and 0 <= value < 10**13


@pytest.mark.parametrize("payload", [b"1E+100", b"-1", b"NaN", b"Infinity", b"9" * 1_000_000])
def test_a_retained_energy_state_from_anyone_else_is_ignored(payload: bytes):
    assert ha_discovery.parse_published(payload) is None


def test_no_text_travels_in_an_array_literal_built_by_the_driver():
    """pg8000 writes a list as an array literal and leaves `null` unquoted: text goes as JSON
    (adapters/sql/ingest.py). Numbers and times may go as arrays."""
    cast = re.compile(r"(AS|::)\s*(text|varchar|character varying|name|bpchar|json|jsonb)\s*\[\]",
                      re.IGNORECASE)  # fmt: skip
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("services", "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if cast.search(line)
    ]
    assert offenders == []


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.binary(max_size=200) | JSONISH.map(lambda v: json.dumps(v).encode()))
def test_a_push_request_of_any_bytes_is_recorded_or_a_dead_letter(pg, r, raw: bytes):
    """The pusher's decoder, fed arbitrary bytes on its list: never an exception, and the
    list is empty after (recorded, or kept as a dead letter)."""
    r.execute_command("FLUSHDB")
    settings_ = pusher_settings.PushSettings(sheet_url=None, tz=totals.zone("Europe/Copenhagen"))
    pusher = Pusher(
        postgres.LockedSession(lambda n: postgres.connect(pg, n), "pusher"), r, settings_
    )
    try:
        r.rpush(work_queue.PUSH_PROCESSING, raw)
        pusher.requests.recover()
    finally:
        pusher.close()
    assert r.llen(work_queue.PUSH_PROCESSING) == 0


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=80) | st.sampled_from([b"energy-worker/0123abcd4567ef89/meter/1/energy"]),
    st.binary(max_size=80) | st.sampled_from([b"1E+100", b"NaN", b"-1", b"5.5"]),
)
def test_a_message_from_the_broker_of_any_bytes_is_read_or_ignored(topic: bytes, payload: bytes):
    """What the broker passes on (any client of it may publish to our topics): a retained
    energy state is remembered only when it is one we could have written."""
    broker = Broker(
        publisher_settings.MqttSettings("127.0.0.1"),
        ha_discovery.Layout("homeassistant", "energy-worker", "0123abcd4567ef89"),
        [1],
        program.Termination(),
    )
    message = mqtt.MQTTMessage(topic=topic)
    message.payload = payload
    broker._on_message(broker.client, None, message)
    seen = broker.seen_energy.get(1)
    assert seen is None or (seen.is_finite() and 0 <= seen < 10**13)


def test_a_push_request_postgresql_refuses_is_a_dead_letter_and_the_next_is_recorded(fresh_pg, r):
    """The pusher's own write refused for what it carries: the request is kept as a dead letter
    with the error, and the next request is recorded (not waited out as an outage)."""
    con = postgres.connect(fresh_pg, "tests")
    con.run(
        "ALTER TABLE push_outbox ADD CONSTRAINT refuse_13 "
        "CHECK (dedup_key <> 'request:1700000000000-abcd:13')"
    )
    with sheet_server() as server:
        settings_ = pusher_settings.PushSettings(
            sheet_url=config.secret(server.base + "/exec"), tz=totals.zone("Europe/Copenhagen")
        )
        pusher = Pusher(
            postgres.LockedSession(lambda n: postgres.connect(fresh_pg, n), "pusher"), r, settings_
        )
        try:
            for seq in (13, 14):
                item = {"e": "1700000000000-abcd", "s": seq, "k": "g", "v": "true", "at": 1,
                        "key": "pushtogoogle"}  # fmt: skip
                r.rpush(work_queue.PUSH, json.dumps(item))
            for _ in range(3):
                pusher.step(block=False)
        finally:
            pusher.close()
    assert [row[0] for row in con.run("SELECT dedup_key FROM push_outbox")] == [
        "request:1700000000000-abcd:14"
    ]
    (letter,) = [json.loads(e) for e in r.lrange(work_queue.DEADLETTER, 0, -1)]
    assert "23514" in letter["reason"]
    assert r.llen(work_queue.PUSH) == 0 and r.llen(work_queue.PUSH_PROCESSING) == 0
    con.close()
