"""The router against a real Redis, in-process (Router.run_once), and once as a process for
what needs one: being killed at any instant."""

from __future__ import annotations

import json
import logging
import signal
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from energy_worker.adapters import work_queue
from energy_worker.adapters.redis_client import connect_redis
from energy_worker.programs.router import Router
from helpers import wait_until
from tcpproxy import TcpProxy

METERS = frozenset(range(1, 8))
NEVER = 3600.0  # a sweep interval no test waits out: what is routed came by notification


def work(r: redis.Redis) -> list[dict]:
    return [json.loads(raw) for raw in r.lrange(work_queue.WORK, 0, -1)]


def dead_letters(r: redis.Redis) -> list[dict]:
    return [json.loads(raw) for raw in r.lrange(work_queue.DEADLETTER, 0, -1)]


@pytest.fixture
def make_router(r: redis.Redis, redis_db) -> Iterator:
    made: list[Router] = []

    def make(client: redis.Redis | None = None, sweep_interval: float = NEVER) -> Router:
        router = Router(client or r, redis_db.db, METERS, sweep_interval=sweep_interval)
        made.append(router)
        router.run_once(max_wait=0)  # subscribes and makes its first sweep
        return router

    yield make
    for router in made:
        router.close()


def until_routed(router: Router, condition, timeout: float = 5.0) -> None:
    """Let the router work until the condition holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the router"
        router.run_once(max_wait=0.05)


def test_a_new_key_is_taken_on_its_notification_not_by_a_sweep(make_router, r):
    router = make_router()
    for millis in range(20):
        r.set("channel:1:timestamp", str(millis), nx=True)
        until_routed(router, lambda: not r.exists("channel:1:timestamp"), 1.0)
    items = work(r)
    assert [item["v"] for item in items] == [str(m) for m in range(20)]
    assert [item["s"] for item in items] == list(range(1, 21))
    assert {item["k"] for item in items} == {"t"} and {item["m"] for item in items} == {1}
    assert all(abs(item["at"] - time.time() * 1000) < 60_000 for item in items)


def test_every_kind_goes_where_it_belongs_and_debug_is_followed(make_router, r, caplog):
    caplog.set_level(logging.INFO)
    router = make_router()
    r.set("channel:2:metercount", "27997")
    r.set("Chanel:2:Timestamp", "123")
    r.set("POWERUP", "true")
    r.set("pushtogoogle", "true")
    r.set("foo", "bar")
    r.set("debug", "true")
    until_routed(router, lambda: r.llen(work_queue.WORK) == 3 and r.llen(work_queue.PUSH) == 1)
    assert sorted((i["k"], i.get("m") or 0, i["v"]) for i in work(r)) == [
        ("c", 2, "27997"),
        ("p", 0, "true"),
        ("t", 2, "123"),
    ]
    until_routed(router, lambda: "debug logging on" in caplog.text)
    assert r.get("foo") == b"bar" and r.get("debug") == b"true"  # left for the webhook
    r.set("debug", "false")
    until_routed(router, lambda: "debug logging off" in caplog.text)


def test_illegal_input_is_removed_logged_and_kept_with_its_reason(make_router, r, caplog):
    router = make_router()
    r.set("channel:9:timestamp", "100")
    r.rpush("somelist", "x", "y")  # a new key of another type: heard as a new-key event
    r.set("channel:1:timestamp", "9" * 5000)
    until_routed(router, lambda: r.llen(work_queue.DEADLETTER) == 3)
    letters = {letter["key"]: letter for letter in dead_letters(r)}
    assert letters["channel:9:timestamp"]["reason"] == "meter 9 is not configured"
    assert letters["somelist"]["value"] == "list of 2 item(s)"
    assert len(letters["channel:1:timestamp"]["value"]) == work_queue.PREVIEW_BYTES
    assert not r.exists("channel:9:timestamp", "somelist", "channel:1:timestamp")
    # and each left a record for PostgreSQL on the work list (the processor's dead_letters)
    assert sorted((i["k"], i["key"], i["reason"]) for i in work(r)) == [
        ("r", "channel:1:timestamp", "value is 5000 bytes long (a legal one is at most 20)"),
        ("r", "channel:9:timestamp", "meter 9 is not configured"),
        ("r", "somelist", "unknown key"),
    ]
    lines = [ln for ln in caplog.text.splitlines() if "rejected" in ln]
    assert len(lines) == 3 and all(len(line) < 300 for line in lines)


def test_keys_present_at_start_are_swept_powerup_first(make_router, r):
    r.set("channel:1:timestamp", "500")
    r.set("channel:2:timestamp", "700")
    r.set("powerup", "true")
    r.set("energy-worker:somethingofours", "x")
    make_router()
    assert [i["k"] for i in work(r)] == ["p", "t", "t"]
    assert r.get("energy-worker:somethingofours") == b"x"  # our namespace is never touched


def test_stop_routes_everything_present_first(make_router, r, redis_db):
    router = make_router()
    router.close()  # not listening: keys pile up
    for n in range(1, 8):
        r.set(f"channel:{n}:timestamp", "1000")
    r.set("stop", "true")
    r.set("pushtogoogle", "true")
    r.set("junk", "x")
    assert router.run_once(max_wait=0) is True
    assert [i["k"] for i in work(r)] == ["t"] * 7 + ["r", "x"]  # legal keys first, stop last
    assert r.llen(work_queue.PUSH) == 1 and r.llen(work_queue.DEADLETTER) == 1


def test_a_stop_heard_by_notification_sweeps_first(make_router, r):
    router = make_router()
    r.set("channel:3:timestamp", "1")
    r.set("stop", "true")
    until_routed(router, lambda: r.llen(work_queue.WORK) == 2)
    assert [i["k"] for i in work(r)] == ["t", "x"]


def test_without_config_rights_it_says_so_and_sweeps_instead(make_router, r, redis_db, caplog):
    """A server that refuses CONFIG (an ACL user without it, as managed servers do)."""
    user = f"ew-test-{uuid.uuid4().hex[:8]}"
    r.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-config")
    limited = redis.Redis(
        host=redis_db.host, port=redis_db.port, db=redis_db.db, username=user, password="secret"
    )
    try:
        router = make_router(limited, sweep_interval=5.0)
        assert "keyspace notifications unavailable" in caplog.text
        assert router.sweep_interval == 0.25
        r.set("channel:1:timestamp", "42")
        until_routed(router, lambda: r.llen(work_queue.WORK) == 1, 2)
    finally:
        limited.close()
        r.execute_command("ACL", "DELUSER", user)


def test_a_debug_key_of_another_type_is_rejected_and_pulses_keep_flowing(make_router, r):
    router = make_router()
    r.rpush("debug", "x")
    until_routed(router, lambda: not r.exists("debug"))
    assert dead_letters(r)[0]["reason"] == "key holds a Redis list, not a string"
    r.set("channel:1:timestamp", "1")
    until_routed(router, lambda: not r.exists("channel:1:timestamp"))


def test_deleting_the_debug_key_switches_debug_off_at_the_next_sweep(make_router, r, caplog):
    caplog.set_level(logging.INFO)
    router = make_router(sweep_interval=0.1)
    r.set("debug", "true")
    until_routed(router, lambda: "debug logging on" in caplog.text)
    r.delete("debug")
    until_routed(router, lambda: "debug logging off" in caplog.text)


def test_notifications_switched_off_behind_its_back_are_switched_on_again(make_router, r, caplog):
    """A restarted Redis forgets a CONFIG SET; the router notices at its next sweep. (This
    Redis is the test run's own: switching a server-wide setting is allowed here.)"""
    router = make_router(sweep_interval=0.1)
    r.config_set("notify-keyspace-events", "")
    until_routed(router, lambda: "keyspace notifications were off" in caplog.text)
    assert {"K", "$"} <= set(r.config_get("notify-keyspace-events")["notify-keyspace-events"])


def test_router_killed_at_any_instant_loses_no_pulse_and_duplicates_none(spawn, r):
    """The webhook writes pulses as fast as keys clear while the router process is killed
    again and again; every pulse ends up on the work list exactly once."""
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
    assert [int(item["v"]) for item in work(r)] == sent
    assert [item["s"] for item in work(r)] == list(range(1, len(sent) + 1))


def test_a_huge_name_is_rejected_by_its_length_and_costs_the_router_nothing(spawn, r):
    """A 10 MB name: the router process never receives it (key events are heard only for
    names as long as a legal one; the sweep rejects longer ones inside Redis), so its peak
    memory grows by less than 16 MiB (it used to: +779 MB, and an out-of-memory kill on a Pi).
    The dead letter keeps an excerpt, and the reason its length."""
    proc = spawn("router")
    proc.wait_for_log("listening")
    r.set("channel:1:timestamp", "1")  # the router is routing: its memory is warm
    wait_until(lambda: not r.exists("channel:1:timestamp"))
    before = peak_rss(proc.pid)
    name = b"channel:1:" + b"\x01" * 10_000_000
    r.set(name, "1")
    wait_until(lambda: r.llen(work_queue.DEADLETTER) == 1, 30, what="the name to be rejected")
    assert peak_rss(proc.pid) - before < 16 << 20
    (letter,) = dead_letters(r)
    assert letter["key"] == "channel:1:" + "\\x01" * (work_queue.PREVIEW_BYTES - 10)
    assert letter["reason"] == "name is 10000010 bytes long (a legal one is at most 21)"
    assert not r.exists(name)
    proc.wait_for_log("10000010 bytes")  # logged after the sweep that pushed the dead letter
    (line,) = [line for line in proc.log().splitlines() if "rejected" in line]
    assert len(line) < 300 and "10000010 bytes" in line


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) << 10


@pytest.mark.slow
def test_a_sweep_routes_legal_keys_first_step_by_step_in_bounded_memory(make_router, r):
    """A flood of junk with a few pulses in it: the sweep routes the pulses before any junk,
    and holds no more than one SCAN step's names (it used to: 1M junk keys cost +123 MiB and
    8.4 s before the first key was routed, illegal keys first)."""
    router = make_router()
    router.close()  # not listening: keys pile up, for the sweep
    pipe = r.pipeline(transaction=False)
    for n in range(10_000):
        pipe.set(f"junk:{n}", "x")
    pipe.execute()
    for n in range(1, 8):
        r.set(f"channel:{n}:timestamp", "1000")
    r.set("powerup", "true")
    tracemalloc.start()
    try:
        router.sweep()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kinds = [item["k"] for item in work(r)]
    assert kinds[:8] == ["p"] + ["t"] * 7 and kinds[8:] == ["r"] * 10_000
    assert peak < 1 << 20
    assert all(key.startswith(b"energy-worker:") for key in r.scan_iter())


def test_a_sweep_routes_what_key_events_announce_between_its_steps(make_router, r):
    """A pulse that comes while a sweep works through a flood is routed at once, not after
    the flood."""
    router = make_router()
    pipe = r.pipeline(transaction=False)
    for n in range(3000):
        pipe.set(f"junk:{n}", "x")
    pipe.execute()
    while router.heard(0.2):  # the flood's key events, as if routed: the sweep is tested
        pass
    scan = router.queues.scan

    def step(cursor: int, count: int, legal: bool) -> work_queue.Scanned:
        if not legal and cursor == 0:  # the first step through the junk: a pulse comes
            r.set("channel:1:timestamp", "1000")
        return scan(cursor, count, legal)

    router.queues.scan = step
    router.sweep()
    kinds = [item["k"] for item in work(r)]
    assert kinds.index("t") < 2000 and kinds.count("r") == 3000  # not after all the junk


def test_rejections_are_logged_at_a_bounded_rate(r, redis_db, caplog):
    """The first ones in full, then one line a minute with the count (it used to: a line for each,
    however many)."""
    now = [0.0]
    router = Router(r, redis_db.db, METERS, sweep_interval=NEVER, clock=lambda: now[0])
    try:
        router.run_once(max_wait=0)
        for n in range(50):
            r.set(f"junk{n}", "x")
        until_routed(router, lambda: r.llen(work_queue.DEADLETTER) == 50)
        lines = [ln for ln in caplog.text.splitlines() if "rejected" in ln or "more" in ln]
        assert len(lines) == 10 and all("rejected 'junk" in line for line in lines)
        now[0] += 60
        router.run_once(max_wait=0)
        assert "40 more rejections in the last 60 s" in caplog.text.splitlines()[-1]
    finally:
        router.close()


def routed_once_heard(router: Router, r: redis.Redis, value: str, timeout: float) -> None:
    """SET a pulse and let the router work until it has taken it. A subscription just sent
    may not be in force yet, so a key not taken is SET again (XX: only while it is there, so
    it is never taken twice), which announces it again: only a notification can route it."""
    key = "channel:1:timestamp"
    r.set(key, value, nx=True)
    deadline = time.monotonic() + timeout
    while r.exists(key):
        assert time.monotonic() < deadline, "the router did not hear the key"
        r.set(key, value, xx=True)
        router.run_once(max_wait=0.2)


@pytest.mark.slow
def test_after_a_silent_partition_of_a_quiet_router_it_is_back_on_notifications_in_10_s(
    r: redis.Redis, redis_db
):
    """A partition tells nobody: the subscription hears nothing, as on a quiet evening, and no
    command of the router's would time out (no sweep is due). The unanswered health check
    shows it; the router starts afresh on new connections as its main loop does."""
    proxy = TcpProxy(redis_db.host, redis_db.port)
    client = connect_redis(replace(redis_db, host="127.0.0.1", port=proxy.port))
    router = Router(client, redis_db.db, METERS, sweep_interval=NEVER)
    try:
        router.run_once(max_wait=0)
        routed_once_heard(router, r, "1", 10)
        before = router.pubsub
        proxy.blackhole()
        proxy.heal()  # new connections get through; the router's own stay silent
        healed = time.monotonic()
        while router.pubsub is before or router.pubsub is None:
            assert time.monotonic() - healed < 10, "the router did not notice the partition"
            try:
                router.run_once(max_wait=0.05)
            except redis.RedisError:
                router.close()  # as main() does
        routed_once_heard(router, r, "2", 10 - (time.monotonic() - healed))
        assert [item["v"] for item in work(r)] == ["1", "2"]
    finally:
        router.close()
        proxy.close()
