"""Whose keys a Redis database holds (services/energy_worker/adapters/keyspace.py), against the
test run's Redis: ours and the webhook's, a few strays, or another application's, and the lines
that say so. The set-up process refusing to start is tests/test_setup.py's."""

from __future__ import annotations

import pytest
import redis

from energy_worker.adapters import keyspace
from energy_worker.adapters.config import RedisSettings

PASSWORD = "hunter2-Zq9"
SETTINGS = RedisSettings("10.0.0.2", 6380, 3, PASSWORD)


@pytest.mark.parametrize(
    "key",
    [
        b"channel:1:timestamp",
        b"chanel:99:Timestamp",  # a meter not configured is still the webhook's key
        b"CHANNEL:42:metercount",
        b"powerup",
        b"stop",
        b"pushToGoogle",
        b"debug",
        b"foo",
        b"energy-worker:work",
        b"energy-worker:anything at all",
    ],
)
def test_the_webhooks_and_our_keys_are_ours(key: bytes):
    assert keyspace.is_ours(key)


@pytest.mark.parametrize(
    "key",
    [
        b"channel:100:timestamp",  # no meter of the contract's
        b"channel:01:timestamp",
        b"channel:1:timestamps",
        b"homeassistant:states",
        b"energy-worker",  # our prefix needs its separator
        b"",
        b"\xff\x00",
    ],
)
def test_anything_else_is_foreign(key: bytes):
    assert not keyspace.is_ours(key)


def test_ours_legal_keys_and_their_values_are_never_counted(r: redis.Redis):
    r.set("channel:3:timestamp", "not even a number")  # an illegal value: still the webhook's
    r.set("Chanel:9:MeterCount", "1")
    r.rpush("energy-worker:work", "x")
    r.hset("energy-worker:some-hash", "a", "1")
    r.set("POWERUP", "true")
    found = keyspace.foreign_keys(r)
    assert (found.count, found.examples, found.prefixes) == (0, [], {})
    assert found.application() is None


def test_a_few_strays_are_counted_and_named_but_are_no_application(r: redis.Redis):
    strays = [b"test", b"chanel:1:timestamps", b"x/y", b"\x1b[31mred"]
    for key in strays:
        r.set(key, "1")
    found = keyspace.foreign_keys(r)
    assert found.count == 4
    assert sorted(found.examples) == sorted(strays)
    assert found.prefixes == {b"chanel:": 1, b"x/": 1}
    assert found.application() is None
    line = found.strays(SETTINGS)
    assert line.startswith("Redis database 3 at 10.0.0.2:6380 holds 4 stray key(s)")
    for shown in ("'test'", "'chanel:1:timestamps'", "'x/y'"):
        assert shown in line
    assert "\x1b" not in line and "\n" not in line  # a name cannot colour or split the log
    assert "dead-letter list" in line
    assert PASSWORD not in line


@pytest.mark.parametrize("separator", [":", "/", ".", "|"])
def test_many_keys_under_one_prefix_are_another_applications(r: redis.Redis, separator: str):
    for n in range(keyspace.APPLICATION_KEYS):
        r.set(f"nodered{separator}{n}", "1")
    r.set(f"other{separator}1", "1")
    r.set("channel:1:timestamp", "1")  # ours among them
    found = keyspace.foreign_keys(r)
    assert found.count == keyspace.APPLICATION_KEYS + 1
    assert found.application() == f"nodered{separator}".encode()
    assert len(found.examples) == keyspace.EXAMPLES
    line = found.refusal(SETTINGS)
    assert f"holds {keyspace.APPLICATION_KEYS + 1} key(s)" in line
    assert f"{keyspace.APPLICATION_KEYS} of them under 'nodered{separator}'" in line
    assert f"and {keyspace.APPLICATION_KEYS + 1 - keyspace.EXAMPLES} more" in line
    assert "it does not start" in line


def test_one_key_short_of_the_threshold_is_still_strays(r: redis.Redis):
    for n in range(keyspace.APPLICATION_KEYS - 1):
        r.set(f"app:{n}", "1")
    assert keyspace.foreign_keys(r).application() is None
    r.set("app:last", "1")
    assert keyspace.foreign_keys(r).application() == b"app:"


def test_a_name_without_a_short_prefix_has_none():
    found = keyspace.Foreign()
    for n in range(keyspace.APPLICATION_KEYS * 2):
        found.add(b"a" * 65 + b":" + str(n).encode())  # a "prefix" of 65 characters is none
        found.add(b"noseparator" + str(n).encode())
    assert found.prefixes == {} and found.application() is None
    assert found.count == keyspace.APPLICATION_KEYS * 4


def test_prefixes_are_counted_in_bounded_memory_and_the_known_ones_go_on_counting():
    found = keyspace.Foreign()
    found.add(b"app:0")
    for n in range(keyspace.MAX_PREFIXES + 500):
        found.add(f"junk{n}:x".encode())
    assert len(found.prefixes) == keyspace.MAX_PREFIXES
    for n in range(keyspace.APPLICATION_KEYS - 1):
        found.add(f"app:{n + 1}".encode())
    assert found.application() == b"app:"
    assert len(found.examples) == keyspace.EXAMPLES


def test_a_long_or_hostile_name_is_shown_short_and_printable():
    found = keyspace.Foreign()
    found.add(b"\n" + b"A" * 10_000)
    shown = found.shown()
    assert "\n" not in shown and len(shown) < 200


@pytest.mark.parametrize(
    ("settings", "make_run", "hint"),
    [
        (SETTINGS, False, "redis-cli -h 10.0.0.2 -p 6380 -n 3 DEL <key>, with REDISCLI_AUTH="),
        (SETTINGS, True, "make redis-cli ARGS='-n 3 DEL <key>'"),
        (RedisSettings("redis-db", 6379, 0, PASSWORD), False,
         "docker compose exec redis-db redis-cli -n 0 DEL <key>"),
        (RedisSettings("127.0.0.1", 6379, 1), False,  # no password: no word of one
         "(redis-cli -h 127.0.0.1 -p 6379 -n 1 DEL <key>)"),
    ],
)  # fmt: skip
def test_the_refusal_names_the_keys_and_what_to_do_but_never_the_password(
    r: redis.Redis, settings: RedisSettings, make_run: bool, hint: str
):
    for n in range(keyspace.APPLICATION_KEYS):
        r.set(f"homeassistant:entity{n}", "1")
    found = keyspace.foreign_keys(r)
    line = found.refusal(settings, make_run)
    assert hint in line
    assert "'homeassistant:entity" in line and "under 'homeassistant:'" in line
    assert "\n" not in line
    assert PASSWORD not in line
    assert PASSWORD not in found.strays(settings)
    assert PASSWORD not in keyspace.delete_hint(settings, make_run)
