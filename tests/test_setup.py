"""The set-up before the programs start (setup.py): it refuses a Redis database that holds another
application's keys (keyspace.py), instead of letting the router delete them; a stray key it
only names, and the router removes it."""

from __future__ import annotations

import json

import redis

from energy_worker.adapters import keyspace, work_queue
from energy_worker.adapters.config import RedisSettings
from helpers import wait_until


def test_the_webhooks_and_our_keys_are_ours_and_anything_else_is_foreign(r: redis.Redis):
    for key in (b"channel:1:timestamp", b"Chanel:9:Timestamp", b"CHANNEL:42:metercount",
                b"stop", b"POWERUP", b"pushtogoogle", b"debug", b"foo",
                b"energy-worker:deadletter"):  # fmt: skip
        r.set(key, "x")  # whatever the value: it is the webhook's (illegal ones it removes)
    assert keyspace.foreign_keys(r).count == 0
    r.rpush("somelist", "x")
    r.execute_command("HSET", "homeassistant:states", "a", "1")
    r.set("nodered:flow", "1")
    r.set("channel:7:timeſtamp", "1")  # a look-alike is nobody's contract key either
    found = keyspace.foreign_keys(r)
    assert found.count == 4 and len(found.examples) == 4


def test_the_refusal_is_one_line_with_the_count_examples_and_what_to_do(r: redis.Redis):
    for n in range(12):
        r.set(f"app:{n}", "x")
    r.set("other", "x")
    found = keyspace.foreign_keys(r)
    assert found.application() == b"app:"
    line = found.refusal(RedisSettings("redis-db", 6379, 0))
    assert "\n" not in line
    assert "holds 13 key(s) that are neither the webhook's nor energy-worker's" in line
    assert "12 of them under 'app:'" in line and "and 8 more" in line
    assert "REDIS_DB" in line and "(docker compose exec redis-db redis-cli -n 0 DEL <key>)" in line
    # each hint names what works where it is read
    make_run = found.refusal(RedisSettings("127.0.0.1", 40001, 0, "pw"), make_run=True)
    assert "(make redis-cli ARGS='-n 0 DEL <key>')" in make_run
    own = found.refusal(RedisSettings("10.0.0.2", 6380, 2, "pw"))
    assert "(redis-cli -h 10.0.0.2 -p 6380 -n 2 DEL <key>, with REDISCLI_AUTH=" in own


def test_a_few_stray_keys_are_no_application(r: redis.Redis):
    for n in range(keyspace.APPLICATION_KEYS - 1):
        r.set(f"app:{n}", "x")
    for n in range(50):
        r.set(f"stray{n}", "x")  # no prefix: no application's
    found = keyspace.foreign_keys(r)
    assert found.count == 59 and found.application() is None
    r.set("app:last", "x")
    assert keyspace.foreign_keys(r).application() == b"app:"


def test_setup_refuses_to_start_on_a_shared_database_and_deletes_nothing(spawn, r: redis.Redis):
    for n in range(keyspace.APPLICATION_KEYS):
        r.hset(f"homeassistant:entity{n}", "state", "on")
    r.set("channel:1:timestamp", "1000")
    setup = spawn("setup")
    assert setup.wait_exit(60) == 2
    errors = [line for line in setup.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "holds 10 key(s)" in errors[0] and "'homeassistant:" in errors[0]
    assert r.hget("homeassistant:entity0", "state") == b"on"  # left as it was
    for n in range(keyspace.APPLICATION_KEYS):
        r.delete(f"homeassistant:entity{n}")
    assert spawn("setup").wait_exit(60) == 0  # a database of its own: it starts


def test_a_stray_key_at_start_is_named_then_removed_like_any_illegal_key(spawn, r: redis.Redis):
    """One key written while energy-worker was down no longer keeps it from starting (it used
    to: a restart loop): the set-up names it, the router rejects it with a dead letter."""
    r.rpush("somelist", "x")
    setup = spawn("setup")
    assert setup.wait_exit(60) == 0
    (line,) = [line for line in setup.log().splitlines() if "stray" in line]
    assert " WARNING " in line and "'somelist'" in line
    assert r.lrange("somelist", 0, -1) == [b"x"]  # the set-up deletes nothing
    spawn("router")
    wait_until(lambda: not r.exists("somelist"), what="the router to remove it")
    (letter,) = [json.loads(raw) for raw in r.lrange(work_queue.DEADLETTER, 0, -1)]
    assert (letter["key"], letter["reason"]) == ("somelist", "unknown key")
