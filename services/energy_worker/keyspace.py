"""Whose keys a Redis database holds. It belongs to energy-worker and the webhook alone: once
running, the router removes every key that is not the contract's. So at start the set-up looks,
and refuses to start on a database that holds other applications' keys (Home Assistant's,
Node-RED's) instead of deleting them."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from . import keys
from .config import RedisSettings
from .logs import quoted

ANY_METER = frozenset(range(1, 100))  # a webhook key for a meter not configured is still its
EXAMPLES = 5


@dataclass
class Foreign:
    count: int = 0
    examples: list[bytes] = field(default_factory=list)

    def refusal(self, settings: RedisSettings, make_run: bool = False) -> str:
        shown = ", ".join(quoted(key, 40) for key in self.examples)
        more = (
            f" and {self.count - len(self.examples)} more"
            if self.count > len(self.examples)
            else ""
        )
        return (
            f"Redis database {settings.db} at {settings.host}:{settings.port} holds {self.count} "
            f"key(s) that are neither the webhook's nor energy-worker's ({shown}{more}); "
            "energy-worker would delete them as illegal input, so it does not start. Give it a "
            "database of its own (REDIS_DB, shared with the webhook only), or remove those keys "
            f"if they are leftovers ({delete_hint(settings, make_run)})"
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
            found.count += 1
            if len(found.examples) < EXAMPLES:
                found.examples.append(key)
    return found
