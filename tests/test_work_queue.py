"""The Redis side (work_queue.py) against a real Redis: the route script held to the same table of
cases as the Python rules, the moves between lists, and the sequence numbering."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import redis
from conftest import RedisServer
from hypothesis import HealthCheck, given, settings

from energy_worker.adapters import work_queue
from energy_worker.adapters.work_queue import Queues
from energy_worker.core import keys, ledger
from energy_worker.core.domain import Item, Meter, MeterRecord, MeterState
from energy_worker.core.keys import Kind
from key_cases import CASES, METERS, Outcome, key_names, python_outcome, values


def lua_outcome(r: redis.Redis, queues: Queues, key: bytes, value: bytes) -> Outcome:
    """SET the key, route it with the script, and say what became of it."""
    r.delete(work_queue.WORK, work_queue.PUSH, key)
    r.set(key, value)
    result = queues.route(key)
    if result.outcome == "rejected":
        assert not r.exists(key)
        # a record for PostgreSQL, numbered like every item: exactly one, on the work list
        (letter,) = [Item.decode(raw) for raw in r.lrange(work_queue.WORK, 0, -1)]
        assert (letter.kind, letter.value, letter.reason) == (
            Kind.REJECTED,
            result.preview,
            result.reason,
        )
        assert r.llen(work_queue.PUSH) == 0 and letter.meter is None
        return Outcome("rejected", reason=result.reason)
    if result.outcome == "left":
        assert r.get(key) == value
        return Outcome("left", result.kind)
    assert result.outcome == "routed" and not r.exists(key)
    lists = r.lrange(work_queue.WORK, 0, -1) + r.lrange(work_queue.PUSH, 0, -1)
    (item,) = [Item.decode(raw) for raw in lists]
    assert item.kind is result.kind and item.value == value.decode()
    return Outcome("routed", item.kind, item.meter)


@pytest.fixture
def queues(r: redis.Redis) -> Queues:
    return Queues(r, METERS)


@pytest.mark.parametrize(("key", "value", "outcome"), CASES, ids=range(len(CASES)))
def test_the_table_of_cases(r, queues, key: bytes, value: bytes, outcome):
    assert lua_outcome(r, queues, key, value) == outcome


SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(key=key_names, value=values)
def test_python_and_lua_agree_on_generated_keys(r, queues, key: bytes, value: bytes):
    assert lua_outcome(r, queues, key, value) == python_outcome(key, value)


def count_changes(items: list[Item]) -> dict[int, int]:
    """How far the items move each meter's count, applied to meters at 500 counts."""
    meters = {n: Meter(n, f"m{n}", 1000, 17250, Decimal(5)) for n in METERS}
    records = {n: MeterRecord(MeterState(counts=500, last_millis=1), None) for n in METERS}
    plan = ledger.plan_batch(items, meters, records, {}, range(len(items)))
    return {n: rec.state.counts - 500 for n, rec in plan.records.items() if rec.state.counts != 500}


@SETTINGS
@given(key=key_names, value=values)
def test_no_key_but_a_timestamp_moves_a_meter_further_than_its_own_metercount(
    r, queues, key: bytes, value: bytes
):
    lua_outcome(r, queues, key, value)
    items = [Item.decode(raw) for raw in r.lrange(work_queue.WORK, 0, -1)]
    if items and items[0].kind is Kind.TIMESTAMP:
        assert all(abs(change) <= 1 for change in count_changes(items).values())
        return
    for meter, change in count_changes(items).items():
        lua_outcome(r, queues, f"channel:{meter}:metercount".encode(), value)
        contract = count_changes([Item.decode(raw) for raw in r.lrange(work_queue.WORK, 0, -1)])
        assert abs(change) <= abs(contract.get(meter, 0))


def test_keys_of_other_types_are_rejected_with_a_preview(r, queues):
    r.rpush("channel:1:timestamp", "1", "2")
    r.hset("stop", mapping={"a": "1"})
    assert queues.route(b"channel:1:timestamp").reason == "key holds a Redis list, not a string"
    result = queues.route(b"stop")
    assert (result.reason, result.preview) == (
        "key holds a Redis hash, not a string",
        "hash of 1 item(s)",
    )
    letters = [json.loads(raw) for raw in r.lrange(work_queue.DEADLETTER, 0, -1)]
    assert [letter["value"] for letter in letters] == ["hash of 1 item(s)", "list of 2 item(s)"]
    assert r.get(work_queue.REJECTED) == b"2"


def test_a_huge_value_is_rejected_without_being_read(tmp_path):
    """Its length is checked first, and a preview reads a string's first bytes only and another
    type's size (10 list items of 20 MB used to take Redis from 404 to 1,048 MB). On a server
    of this test's own, whose peak memory is this test's."""
    server = RedisServer(tmp_path)
    client = redis.Redis(port=server.port)
    try:
        queues = Queues(client, METERS)
        item = b"7" * (4 << 20)
        for _ in range(4):
            client.rpush("somelist", item)
        client.set("channel:1:timestamp", b"1" * (16 << 20))
        client.set("foo", b"x")
        peak = used_memory_peak(client)
        rejected = [queues.route(b"somelist"), queues.route(b"channel:1:timestamp")]
        assert [(result.reason, result.preview[:20]) for result in rejected] == [
            ("unknown key", "list of 4 item(s)"),
            ("value is 16777216 bytes long (a legal one is at most 20)", "1" * 20),
        ]
        assert used_memory_peak(client) - peak < 2 << 20
    finally:
        client.close()
        server.stop()


def used_memory_peak(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory_peak"])


def test_a_push_request_joins_one_that_waits(r, queues):
    """200 `pushtogoogle` writes while the pusher is busy are one request (it used to: 201 rows
    in the outbox, and so 201 requests to Google)."""
    for _ in range(200):
        r.set("pushtogoogle", "true")
        assert queues.route(b"pushtogoogle").outcome in ("routed", "joined")
    assert r.llen(work_queue.PUSH) == 1 and not r.exists("pushtogoogle")
    r.lmove(
        work_queue.PUSH, work_queue.PUSH_PROCESSING, "LEFT", "RIGHT"
    )  # taken, its readings read
    r.set("pushtogoogle", "true")
    assert queues.route(b"pushtogoogle").outcome == "routed"  # a new request after that
    assert r.llen(work_queue.PUSH) == 1


def test_a_key_gone_before_its_turn_is_no_error(queues):
    assert queues.route(b"channel:1:timestamp").outcome == "gone"


def test_items_are_numbered_and_stamped(r, queues):
    for millis in ("10", "20"):
        r.set("channel:2:timestamp", millis)
        queues.route(b"channel:2:timestamp", at_ms=1_700_000_000_123)
    items = [Item.decode(raw) for raw in r.lrange(work_queue.WORK, 0, -1)]
    assert [(i.seq, i.value, i.at_ms, i.key) for i in items] == [
        (1, "10", 1_700_000_000_123, "channel:2:timestamp"),
        (2, "20", 1_700_000_000_123, "channel:2:timestamp"),
    ]
    assert items[0].epoch == items[1].epoch == r.get(work_queue.EPOCH).decode()


def test_pushtogoogle_goes_to_the_pushers_list(r, queues):
    r.set("pushtogoogle", "true")
    queues.route(b"pushtogoogle")
    assert r.llen(work_queue.WORK) == 0 and r.llen(work_queue.PUSH) == 1


def test_the_dead_letter_list_is_capped(r, queues):
    for n in range(work_queue.DEADLETTER_CAP + 5):
        r.set(f"junk{n}", "x")
        queues.route(f"junk{n}".encode())
    assert r.llen(work_queue.DEADLETTER) == work_queue.DEADLETTER_CAP
    assert (
        json.loads(r.lindex(work_queue.DEADLETTER, 0))["key"]
        == f"junk{work_queue.DEADLETTER_CAP + 4}"
    )
    assert int(r.get(work_queue.REJECTED)) == work_queue.DEADLETTER_CAP + 5


def test_a_name_that_is_not_printable_is_kept_printable(r, queues):
    r.set(b"\xff\x00bad", "x")
    queues.route(b"\xff\x00bad")
    assert json.loads(r.lindex(work_queue.DEADLETTER, 0))["key"] == "\\xff\\x00bad"


def test_take_tops_up_the_processing_list_and_ack_drops_its_head(r, queues):
    for n in range(5):
        r.set("channel:1:timestamp", str(n))
        queues.route(b"channel:1:timestamp")
    assert len(queues.take(2)) == 2 and r.llen(work_queue.WORK) == 3
    assert [Item.decode(raw).value for raw in queues.take(3)] == ["0", "1", "2"]
    queues.ack(2)
    assert [Item.decode(raw).value for raw in queues.take(10)] == ["2", "3", "4"]
    assert queues.backlog() == 3


def restamp(r: redis.Redis, name: str, at_ms: int) -> None:
    """Give the head of a list an older router stamp than the one it was taken with."""
    raw = r.lindex(name, 0)
    assert raw is not None
    head = json.loads(raw)
    r.lset(name, 0, json.dumps({**head, "at": at_ms}))


def test_oldest_waiting_is_the_oldest_stamp_on_either_list(r, queues):
    assert queues.oldest_waiting() is None  # nothing waits
    for n in range(3):
        r.set("channel:1:timestamp", str(n))
        queues.route(b"channel:1:timestamp")
    stamped = Item.decode(r.lindex(work_queue.WORK, 0)).at_ms
    assert queues.oldest_waiting() == stamped  # the router's own stamp
    queues.take(1)  # the head moves to the processing list
    restamp(r, work_queue.PROCESSING, stamped - 5_000)
    assert queues.oldest_waiting() == stamped - 5_000
    restamp(r, work_queue.WORK, stamped - 9_000)  # an older one still on the work list
    assert queues.oldest_waiting() == stamped - 9_000
    queues.ack(1)
    assert queues.oldest_waiting() == stamped - 9_000
    queues.take(2)
    queues.ack(2)
    assert queues.oldest_waiting() is None


def test_a_sequence_behind_what_is_committed_gets_a_new_epoch(r, queues):
    r.set("channel:1:timestamp", "1")
    queues.route(b"channel:1:timestamp")
    epoch = r.get(work_queue.EPOCH).decode()
    assert queues.ensure_ahead({epoch: 1}) is None
    problem = queues.ensure_ahead({epoch: 5})
    assert problem is not None and "Redis lost writes" in problem
    assert r.get(work_queue.EPOCH).decode() != epoch


def test_the_script_is_given_exactly_the_python_rules(r):
    """The table rendered into the route script, evaluated by Redis' Lua, is keys.rules()."""
    text = work_queue._lua("route.lua")
    start = text.index("local rules = ")
    line = text[start : text.index("\n", start)]
    assert text.count("local rules = ") == 1 and "--#rules" not in text
    assert json.loads(r.eval(f"{line}\nreturn cjson.encode(rules)", 0)) == keys.rules()


def test_one_change_to_the_python_table_changes_both_readings(r, monkeypatch):
    """A name added to keys.FLAG_NAMES alone is a key to Python and to the script alike."""
    queues = Queues(r, METERS)
    assert lua_outcome(r, queues, b"reboot", b"true") == python_outcome(b"reboot", b"true")
    assert python_outcome(b"reboot", b"true").action == "rejected"
    monkeypatch.setitem(keys.FLAG_NAMES, b"reboot", Kind.POWERUP)
    monkeypatch.setitem(keys.CHANNEL_KINDS, b"pulse", Kind.TIMESTAMP)
    monkeypatch.setattr(keys, "LIMITS", {**keys.LIMITS, Kind.METERCOUNT: 500})
    queues._route = r.register_script(work_queue._lua("route.lua"))
    for key, value, outcome in [
        (b"reboot", b"TRUE", Outcome("routed", Kind.POWERUP)),
        (b"channel:3:pulse", b"7", Outcome("routed", Kind.TIMESTAMP, 3)),
        (b"channel:3:metercount", b"501", Outcome("rejected", reason="value is above 500")),
        (b"channel:3:metercount", b"500", Outcome("routed", Kind.METERCOUNT, 3)),
    ]:
        assert python_outcome(key, value) == outcome
        assert lua_outcome(r, queues, key, value) == outcome
