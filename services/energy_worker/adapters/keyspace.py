"""Whose keys a Redis database holds. It belongs to energy-worker and the webhook alone: once
running, the router removes every key that is not the contract's. So at start the set-up looks,
and refuses to start on a database that clearly holds another application's keys (Home
Assistant's, Node-RED's: many keys under one prefix of theirs) instead of deleting them. A few
stray keys (a test, a typo, a forged one) are only named: the router removes them like any
other illegal input, each kept in the dead-letter list."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import redis

from energy_worker.adapters.config import RedisSettings
from energy_worker.adapters.logs import quoted
from energy_worker.core import keys

ANY_METER = frozenset(range(1, 100))  # a webhook key for a meter not configured is still its
EXAMPLES = 5
# An application's keys share a prefix: the name up to its first separator, as in
# `homeassistant:states`, `nodered/flow`. This many under one prefix that is not ours are an
# application's, not strays.
APPLICATION_KEYS = 10
_PREFIX = re.compile(rb"[^:/.|]{1,64}[:/.|]")
MAX_PREFIXES = 10_000  # prefixes counted at most: a flood of junk names costs bounded memory


@dataclass
class Foreign:
    count: int = 0
    examples: list[bytes] = field(default_factory=list)
    prefixes: dict[bytes, int] = field(default_factory=dict)  # foreign keys per prefix

    def add(self, name: bytes) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(name)
        found = _PREFIX.match(name)
        if found is not None:
            prefix = found.group()
            if prefix in self.prefixes or len(self.prefixes) < MAX_PREFIXES:
                self.prefixes[prefix] = self.prefixes.get(prefix, 0) + 1

    def application(self) -> bytes | None:
        """The prefix of another application's keys, if the database holds one's."""
        prefix, count = max(self.prefixes.items(), key=lambda item: item[1], default=(b"", 0))
        return prefix if count >= APPLICATION_KEYS else None

    def shown(self) -> str:
        shown = ", ".join(quoted(key, 40) for key in self.examples)
        more = self.count - len(self.examples)
        return shown + (f" and {more} more" if more > 0 else "")

    def refusal(self, settings: RedisSettings, make_run: bool = False) -> str:
        prefix = self.application()
        under = f", {self.prefixes[prefix]} of them under {quoted(prefix, 40)}" if prefix else ""
        return (
            f"Redis database {settings.db} at {settings.host}:{settings.port} holds {self.count} "
            f"key(s) that are neither the webhook's nor energy-worker's{under} "
            f"({self.shown()}); they look like another application's, which energy-worker "
            "would delete as illegal input, so it does not start. Give it a database of its own "
            "(REDIS_DB, shared with the webhook only), or remove those keys if they are "
            f"leftovers ({delete_hint(settings, make_run)})"
        )

    def strays(self, settings: RedisSettings) -> str:
        return (
            f"Redis database {settings.db} at {settings.host}:{settings.port} holds "
            f"{self.count} stray key(s) that are neither the webhook's nor energy-worker's "
            f"({self.shown()}); the router removes them as illegal input, each kept in the "
            "dead-letter list (energy-worker deadletters)"
        )


def delete_hint(settings: RedisSettings, make_run: bool) -> str:
    """How to delete a key, where the person reading the line is: `make run`'s Redis is
    stopped with it a moment later, and has a password (`make redis-cli` starts it and uses
    it); compose's is the service redis-db."""
    command = f"-n {settings.db} DEL <key>"
    if make_run:
        return f"make redis-cli ARGS='{command}'"
    if settings.host == "redis-db":
        return f"docker compose exec redis-db redis-cli {command}"
    auth = ", with REDISCLI_AUTH=<its password>" if settings.password else ""
    return f"redis-cli -h {settings.host} -p {settings.port} {command}{auth}"


def is_ours(name: bytes) -> bool:
    """The webhook's (a contract key, of any meter, whatever its value) or energy-worker's."""
    return keys.classify(name, ANY_METER).kind is not keys.Kind.ILLEGAL


def foreign_keys(r: redis.Redis) -> Foreign:
    found = Foreign()
    for key in r.scan_iter(count=1000):
        if not is_ours(key):
            found.add(key)
    return found
