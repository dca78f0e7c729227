"""The router against the real Redis: notifications, sweeps, validation, order, atomicity."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
import redis

from energy_worker import queue
from energy_worker.keys import Kind
from helpers import wait_until


def work(r: redis.Redis) -> list[dict]:
    return [json.loads(raw) for raw in r.lrange(queue.WORK, 0, -1)]


def dead_letters(r: redis.Redis) -> list[dict]:
    return [json.loads(raw) for raw in r.lrange(queue.DEADLETTER, 0, -1)]


@pytest.fixture
def router(spawn):
    proc = spawn("router")
    proc.wait_for_log("listening to keyspace notifications")
    return proc


def test_a_key_is_taken_within_milliseconds_without_waiting_for_a_sweep(router, r):
    latencies = []
    for millis in range(20):
        r.set("channel:1:timestamp", str(millis), nx=True)
        start = time.monotonic()
        wait_until(lambda: not r.exists("channel:1:timestamp"), 1.0, interval=0.0005)
        latencies.append(time.monotonic() - start)
    # the sweep runs every 5 s: anything near that would mean notifications are not used
    assert max(latencies) < 0.5
    items = work(r)
    assert [item["v"] for item in items] == [str(m) for m in range(20)]
    assert [item["s"] for item in items] == list(range(1, 21))
    assert {item["k"] for item in items} == {"t"} and {item["m"] for item in items} == {1}
    assert all(abs(item["at"] - time.time() * 1000) < 60_000 for item in items)


def test_every_kind_goes_where_it_belongs(router, r):
    r.set("channel:2:metercount", "27997")
    r.set("Chanel:2:Timestamp", "123")
    r.set("POWERUP", "true")
    r.set("pushtogoogle", "true")
    r.set("foo", "bar")
    r.set("debug", "true")
    wait_until(lambda: r.llen(queue.WORK) == 3 and r.llen(queue.PUSH) == 1)
    # (a sweep that happens to run meanwhile routes powerup first: both orders are right)
    assert sorted((i["k"], i.get("m") or 0, i["v"]) for i in work(r)) == [
        ("c", 2, "27997"),
        ("p", 0, "true"),
        ("t", 2, "123"),
    ]
    assert r.get("foo") == b"bar"
    assert r.get("debug") == b"true"  # left for the webhook ...
    router.wait_for_log("debug logging on")  # ... and followed
    r.set("debug", "false")
    router.wait_for_log("debug logging off")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("channel:1:timestamp", b"12a", "value is not a whole number"),
        ("channel:1:timestamp", b"4294967296", "value is above 4294967295"),
        ("channel:1:timestamp", b"-5", "value is not a whole number"),
        ("channel:1:timestamp", b"", "value is not a whole number"),
        ("channel:1:timestamp", b"\xff\xfe", "value is not a whole number"),
        ("channel:3:metercount", b"10000000", "value is above 9999999"),
        ("channel:9:timestamp", b"100", "meter 9 is not configured"),
        ("stop", b"please", "value is not 'true'"),
        ("debug", b"maybe", "value is not 'true' or 'false'"),
        ("hello", b"world", "unknown key"),
    ],
)
def test_illegal_input_is_removed_logged_and_kept_with_its_reason(router, r, key, value, reason):
    r.set(key, value)
    wait_until(lambda: r.llen(queue.DEADLETTER) == 1)
    assert not r.exists(key)
    (letter,) = dead_letters(r)
    assert (letter["key"], letter["reason"]) == (key, reason)
    router.wait_for_log(f"rejected '{key}'")
    assert r.llen(queue.WORK) == 0
    assert int(r.get(queue.REJECTED)) == 1


def test_keys_of_other_types_and_names_that_are_not_utf8_are_rejected(router, r):
    r.hset("channel:1:timestamp", mapping={"a": "1"})
    r.rpush("somelist", "x", "y")
    r.set(b"bad\xffname", "1")
    # hash and list keys announce themselves only as new keys (Redis 7) or to the sweep
    wait_until(lambda: r.llen(queue.DEADLETTER) == 3, 10)
    letters = {letter["key"]: letter for letter in dead_letters(r)}
    assert letters["channel:1:timestamp"]["reason"] == "key holds a Redis hash, not a string"
    assert letters["somelist"]["value"] == "list: x, y"
    assert letters["bad\\xffname"]["reason"] == "key is not UTF-8"
    assert sorted(r.keys()) == [
        b"energy-worker:deadletter",
        b"energy-worker:rejected",
        b"energy-worker:test-claim",
    ]


def test_a_long_value_is_truncated_in_the_log_line(router, r):
    r.set("channel:1:timestamp", "9" * 5000)
    wait_until(lambda: r.llen(queue.DEADLETTER) == 1)
    router.wait_for_log("value is above")
    (line,) = [ln for ln in router.log().splitlines() if "rejected" in ln]
    assert len(line) < 300
    assert len(dead_letters(r)[0]["value"]) == queue.PREVIEW_BYTES


def test_keys_present_at_start_are_swept_powerup_first(spawn, r):
    r.set("channel:1:timestamp", "500")
    r.set("channel:2:timestamp", "700")
    r.set("powerup", "true")
    r.set("energy-worker:somethingofours", "x")
    spawn("router")
    wait_until(lambda: r.llen(queue.WORK) == 3)
    assert [i["k"] for i in work(r)] == ["p", "t", "t"]
    assert r.get("energy-worker:somethingofours") == b"x"  # our namespace is never classified


def test_stop_routes_everything_present_first_then_exits_0(router, r):
    router.popen.send_signal(signal.SIGSTOP)  # freeze it, so keys pile up while it does not look
    try:
        for n in range(1, 8):
            r.set(f"channel:{n}:timestamp", "1000")
        r.set("stop", "true")
        r.set("pushtogoogle", "true")
    finally:
        router.popen.send_signal(signal.SIGCONT)
    assert router.wait_exit(10) == 0
    kinds = [i["k"] for i in work(r)]
    assert kinds == ["t"] * 7 + ["x"]
    assert r.llen(queue.PUSH) == 1
    assert "stop: routed everything present" in router.log()


def test_router_killed_at_any_instant_loses_no_pulse_and_duplicates_none(spawn, r):
    """The webhook writes pulses as fast as keys clear while the router is killed again and
    again; every pulse ends up on the work list exactly once."""
    sent: list[int] = []
    value = 0
    for _ in range(5):
        proc = spawn("router")
        proc.wait_for_log("listening")
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            value += 1
            while not r.set("channel:1:timestamp", str(value), nx=True):
                pass  # "102 Processing": the Arduino retries
            sent.append(value)
        proc.kill(signal.SIGKILL)
    spawn("router")
    wait_until(lambda: not r.exists("channel:1:timestamp"))
    values = [int(item["v"]) for item in work(r)]
    assert values == sent
    assert [item["s"] for item in work(r)] == list(range(1, len(sent) + 1))


def test_without_config_rights_it_says_so_and_sweeps_instead(spawn, r):
    """A server that refuses CONFIG (an ACL user without it, as managed servers do)."""
    user = f"ew-test-{uuid.uuid4().hex[:8]}"
    r.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-config")
    try:
        proc = spawn("router", REDIS_USERNAME=user, REDIS_PASSWORD="secret")
        proc.wait_for_log("keyspace notifications unavailable")
        r.set("channel:1:timestamp", "42")
        wait_until(lambda: r.llen(queue.WORK) == 1, 5)
        assert "secret" not in proc.log()
    finally:
        r.execute_command("ACL", "DELUSER", user)


def test_the_dead_letter_list_is_capped(r):
    queues = queue.Queues(r)
    pipe = r.pipeline(transaction=False)
    for n in range(queue.DEADLETTER_CAP + 50):
        pipe.set(f"junk:{n}", "x")
    pipe.execute()
    for n in range(queue.DEADLETTER_CAP + 50):
        queues.route(f"junk:{n}".encode(), Kind.ILLEGAL, None, f"junk:{n}", "unknown key")
    assert r.llen(queue.DEADLETTER) == queue.DEADLETTER_CAP
    assert dead_letters(r)[0]["key"] == f"junk:{queue.DEADLETTER_CAP + 49}"  # newest first
    assert int(r.get(queue.REJECTED)) == queue.DEADLETTER_CAP + 50


def test_debug_switches_the_processor_too(spawn, r):
    proc = spawn("processor")
    proc.wait_for_log("connected to PostgreSQL")
    r.set("debug", "true")
    proc.wait_for_log("debug logging on")
    r.set("debug", "false")
    proc.wait_for_log("debug logging off")


def test_a_debug_key_of_another_type_is_rejected_and_pulses_keep_flowing(router, r):
    r.rpush("debug", "x")
    wait_until(lambda: not r.exists("debug"))
    assert dead_letters(r)[0]["reason"] == "key holds a Redis list, not a string"
    for millis in range(5):
        r.set("channel:1:timestamp", str(millis))
        wait_until(lambda: not r.exists("channel:1:timestamp"), 1.0, interval=0.001)
    assert "Redis unavailable" not in router.log()


def test_deleting_the_debug_key_switches_debug_off(router, r):
    r.set("debug", "true")
    router.wait_for_log("debug logging on")
    r.delete("debug")
    router.wait_for_log("debug logging off")


def test_notifications_switched_off_behind_its_back_are_switched_on_again(router, r):
    """A restarted Redis forgets a CONFIG SET; the router notices at its next sweep."""
    r.config_set("notify-keyspace-events", "")
    router.wait_for_log("keyspace notifications were off", timeout=15)
    flags = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert {"E", "$"} <= set(flags)
    r.set("channel:1:timestamp", "1")
    wait_until(lambda: not r.exists("channel:1:timestamp"), 1.0, interval=0.001)
