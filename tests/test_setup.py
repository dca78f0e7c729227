"""The set-up before the programs start (setup.py): it refuses a Redis database that holds other
applications' keys (keyspace.py), instead of letting the router delete them."""

from __future__ import annotations

import redis

from energy_worker import keyspace
from energy_worker.config import RedisSettings


def test_the_webhooks_and_our_keys_are_ours_and_anything_else_is_foreign(r: redis.Redis):
    for key in (b"channel:1:timestamp", b"Chanel:9:Timestamp", b"CHANNEL:42:metercount",
                b"stop", b"POWERUP", b"pushtogoogle", b"debug", b"foo",
                b"energy-worker:deadletter"):  # fmt: skip
        r.set(key, "x")  # whatever the value: it is the webhook's (illegal ones it removes)
    assert keyspace.foreign_keys(r).count == 0
    r.rpush("somelist", "x")
    r.hset("homeassistant:states", mapping={"a": "1"})
    r.set("nodered:flow", "1")
    r.set("channel:7:timeſtamp", "1")  # a look-alike is nobody's contract key either
    found = keyspace.foreign_keys(r)
    assert found.count == 4 and len(found.examples) == 4


def test_the_refusal_is_one_line_with_the_count_examples_and_what_to_do(r: redis.Redis):
    for n in range(8):
        r.set(f"app:{n}", "x")
    line = keyspace.foreign_keys(r).refusal(RedisSettings("redis-db", 6379, 0))
    assert "\n" not in line
    assert "holds 8 key(s) that are neither the webhook's nor energy-worker's" in line
    assert "and 3 more" in line and "'app:" in line
    assert "REDIS_DB" in line and "(docker compose exec redis-db redis-cli -n 0 DEL <key>)" in line
    # each hint names what works where it is read
    found = keyspace.foreign_keys(r)
    make_run = found.refusal(RedisSettings("127.0.0.1", 40001, 0, "pw"), make_run=True)
    assert "(make redis-cli ARGS='-n 0 DEL <key>')" in make_run
    own = found.refusal(RedisSettings("10.0.0.2", 6380, 2, "pw"))
    assert "(redis-cli -h 10.0.0.2 -p 6380 -n 2 DEL <key>, with REDISCLI_AUTH=" in own


def test_setup_refuses_to_start_on_a_shared_database_and_deletes_nothing(spawn, r: redis.Redis):
    r.rpush("somelist", "x")
    r.set("channel:1:timestamp", "1000")
    setup = spawn("setup")
    assert setup.wait_exit(60) == 2
    errors = [line for line in setup.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "holds 1 key(s)" in errors[0] and "'somelist'" in errors[0]
    assert r.lrange("somelist", 0, -1) == [b"x"]  # left as it was
    r.delete("somelist")
    assert spawn("setup").wait_exit(60) == 0  # a database of its own: it starts
