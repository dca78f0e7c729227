"""The Redis side of the pipeline: our keys, the work item format, and the atomic moves.

Every move of a pulse is one Lua script, so at any instant a pulse is in exactly one place:
its webhook key, the work list, the processor's processing list, or committed in PostgreSQL.
Items carry (epoch, seq): seq increases by one per routed item, and epoch changes only when
Redis lost its data, so the processor can tell an item it has already committed (see
programs/processor/). Epochs start with the time they were made, so a newer epoch sorts later.

The route script reads a key the way keys.classify and keys.value_problem do, from the one
table of rules in core/keys.py (keys.rules(), rendered into the script when it is loaded); one
table of cases (tests/key_cases.py) runs against both.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources

import redis
import redis.client

from energy_worker.core import keys
from energy_worker.core.keys import OWN_PREFIX, Kind

WORK = OWN_PREFIX + "work"
PROCESSING = OWN_PREFIX + "processing"
PUSH = OWN_PREFIX + "push"
PUSH_PROCESSING = OWN_PREFIX + "push-processing"
DEADLETTER = OWN_PREFIX + "deadletter"
REJECTED = OWN_PREFIX + "rejected"
SEQ = OWN_PREFIX + "seq"
EPOCH = OWN_PREFIX + "epoch"
DEADLETTER_CAP = 1000
PREVIEW_BYTES = 200


# The scripts are package data (adapters/lua/), each with its KEYS and ARGV described at its top.
# route_lib.lua is the router's reading of a key, shared by route.lua and scan.lua.
# Where route_lib.lua takes the input contract's rules: keys.rules() as a Lua table, rendered once
# when the script is loaded, so the script's text (and digest) is fixed and costs no ARGV per key.
INCLUDE = "--#include route_lib.lua\n"
RULES = "--#rules\n"


def lua_literal(value: object) -> str:
    """A Lua literal for plain data: a string, a whole number, True, or a dict of them."""
    if isinstance(value, bool):
        if not value:
            raise ValueError("only true is a member")
        return "true"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # every byte outside printable ASCII (and the quote and backslash) as a decimal escape
        return (
            '"'
            + "".join(
                chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}"
                for b in value.encode()
            )
            + '"'
        )
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def _lua(name: str, rules: Mapping[str, object] | None = None) -> str:
    text = resources.files("energy_worker.adapters").joinpath("lua", name).read_text("utf-8")
    if INCLUDE in text:
        text = text.replace(INCLUDE, _lua("route_lib.lua", rules))
    if RULES in text:
        table = lua_literal(dict(keys.rules() if rules is None else rules))
        text = text.replace(RULES, f"local rules = {table}\n")
    return text


_ROUTE = _lua("route.lua")
_SCAN = _lua("scan.lua")
_TAKE = _lua("take.lua")
_NEW_EPOCH = _lua("new_epoch.lua")


@dataclass(frozen=True)
class Routed:
    outcome: str  # 'routed', 'joined' (a push request to one waiting), 'rejected', 'left', 'gone'
    kind: Kind | None = None  # routed or left: of what kind
    reason: str = ""  # rejected: why
    preview: str = ""  # rejected: the value, printable and truncated
    value: bytes | None = None  # left: the debug key's value


@dataclass(frozen=True)
class LongName:
    """A name longer than any legal one, rejected by a sweep without being read whole."""

    excerpt: str  # its first bytes, printable
    length: int
    reason: str


@dataclass(frozen=True)
class Scanned:
    cursor: int  # where the sweep goes on (0: it is done)
    names: list[bytes]
    rejected: list[LongName]


def new_epoch() -> str:
    return f"{time.time_ns() // 1_000_000:013d}-{os.urandom(4).hex()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Queues:
    """Our Redis lists, with the scripts that move items between them."""

    def __init__(self, r: redis.Redis, meters: Collection[int] = ()) -> None:
        self.r = r
        self.meters_arg = "," + ",".join(str(n) for n in sorted(meters)) + ","
        self._route = r.register_script(_ROUTE)
        self._scan = r.register_script(_SCAN)
        self._take = r.register_script(_TAKE)
        self._new_epoch = r.register_script(_NEW_EPOCH)

    def route(self, key: bytes, at_ms: int | None = None) -> Routed:
        """Move a webhook key onto the list for its kind, reject it, or leave it."""
        result = self._route(keys=self._keys(key), args=self._args(at_ms))
        outcome = result[0].decode()
        if outcome in ("routed", "left", "joined"):
            value = result[2] if outcome == "left" and len(result) > 2 else None
            return Routed(outcome, Kind(result[1].decode()), value=value)
        if outcome == "rejected":
            return Routed(
                outcome, reason=result[1].decode(), preview=result[2].decode("utf-8", "replace")
            )
        return Routed(outcome)

    def route_in(self, pipe: redis.client.Pipeline, key: bytes, at_ms: int | None = None) -> None:
        """route(), queued on a pipeline: for building a backlog fast (tests, benchmark)."""
        self._route(keys=self._keys(key), args=self._args(at_ms), client=pipe)

    def scan(self, cursor: int, count: int, legal: bool) -> Scanned:
        """One step of a sweep: from `cursor` on, the names of legal keys (what the router
        routes or follows), or else of illegal input, and the cursor to go on from (0: done).
        None is longer than a legal name: the illegal side rejects those on the spot."""
        args = [*self._args(None), cursor, count, "legal" if legal else "illegal"]
        found = self._scan(keys=self._keys(b"")[1:], args=args)
        next_cursor, names, long = found
        rejected = [
            LongName(excerpt.decode("ascii", "replace"), int(length), reason.decode())
            for excerpt, length, reason in long
        ]
        return Scanned(int(next_cursor), list(names), rejected)

    @staticmethod
    def _keys(key: bytes) -> list[bytes | str]:
        return [key, WORK, PUSH, SEQ, EPOCH, DEADLETTER, REJECTED]

    def _args(self, at_ms: int | None) -> list[str | int]:
        return [
            now_ms() if at_ms is None else at_ms,
            new_epoch(),
            self.meters_arg,
            DEADLETTER_CAP,
            PREVIEW_BYTES,
        ]

    def take(self, limit: int) -> list[bytes]:
        """Items to process: what the processing list holds, topped up from the work list."""
        return list(self._take(keys=[WORK, PROCESSING], args=[limit]))

    def routed_mark(self) -> tuple[str | None, int]:
        """The epoch and the sequence number of the latest item routed: every item on the lists
        now is numbered at or below it (or in an older epoch). The processor notes when it read
        this, on a clock that cannot step, to know how long those items have been in Redis."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(EPOCH)
        pipe.get(SEQ)
        raw_epoch, raw_seq = pipe.execute()
        try:
            seq = int(raw_seq or 0)
        except ValueError:  # not ours: nothing is taken as covered
            seq = 0
        return (None if raw_epoch is None else raw_epoch.decode("utf-8", "replace")), seq

    def ack(self, count: int) -> None:
        """The first `count` processing items are committed: drop them."""
        self.r.ltrim(PROCESSING, count, -1)

    def ensure_ahead(self, done: Mapping[str, int]) -> str | None:
        """If Redis's sequence number is behind what PostgreSQL has committed for the current
        epoch (Redis lost its last writes), start a new epoch; says so when it did."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(EPOCH)
        pipe.get(SEQ)
        raw_epoch, raw_seq = pipe.execute()
        if raw_epoch is None:
            return None
        epoch, seq = raw_epoch.decode(), int(raw_seq or 0)
        committed = done.get(epoch)
        if committed is None or seq >= committed:
            return None
        fresh = new_epoch()
        if not self._new_epoch(keys=[EPOCH], args=[epoch, fresh]):
            return None
        return (
            f"Redis lost writes: its sequence number {seq} is behind the {committed} committed "
            f"in epoch {epoch}; new items are numbered in a new epoch {fresh}"
        )

    def oldest_waiting(self) -> int | None:
        """When the oldest work item still waiting for the processor was stamped (ms since 1970;
        None: none waits). Both lists in one transaction, so an item moving between them is
        seen once."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lindex(PROCESSING, 0)  # processing holds the older items
        pipe.lindex(WORK, 0)
        oldest = None
        for raw in pipe.execute():
            if raw is None:
                continue
            try:
                at = int(json.loads(raw)["at"])
            except (ValueError, TypeError, KeyError):
                continue
            oldest = at if oldest is None else min(oldest, at)
        return oldest

    def backlog(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(WORK)
        pipe.llen(PROCESSING)
        return sum(pipe.execute())

    def dead_letter(self, key: str, value: str, reason: str) -> None:
        """Keep a copy of input the processor or pusher could not use (the router's own
        rejections are kept by its script)."""
        entry = json.dumps({"key": key, "value": value, "reason": reason, "at": now_ms()})
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(DEADLETTER, entry)
        pipe.ltrim(DEADLETTER, 0, DEADLETTER_CAP - 1)
        pipe.incr(REJECTED)
        pipe.execute()
