"""The Redis side of the pipeline: our keys, the work item format, and the atomic moves.

Every move of a pulse is one Lua script, so at any instant a pulse is in exactly one place:
its webhook key, the work list, the processor's processing list, or committed in PostgreSQL.
Items carry (epoch, seq): seq increases by one per routed item, and epoch changes only when
Redis lost its data, so the processor can tell an item it has already committed (see
processor.py). Epochs start with the time they were made, so a newer epoch sorts later.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.client

from .keys import MAX_METERCOUNT, MAX_MILLIS, OWN_PREFIX, ROUTED, Kind

WORK = OWN_PREFIX + "work"
PROCESSING = OWN_PREFIX + "processing"
PUSH = OWN_PREFIX + "push"
DEADLETTER = OWN_PREFIX + "deadletter"
REJECTED = OWN_PREFIX + "rejected"
SEQ = OWN_PREFIX + "seq"
EPOCH = OWN_PREFIX + "epoch"
DEADLETTER_CAP = 1000
PREVIEW_BYTES = 200

# Routes one webhook key: validates its type and value and either moves it onto a list as a
# numbered item, or removes it and keeps a copy with the reason in the dead-letter list.
# KEYS: key, destination list, seq, epoch, dead-letter list, rejected counter
# ARGV: kind, meter, now_ms, epoch candidate, reject reason ('' unless already illegal),
#       key as shown to a person, dead-letter cap, preview bytes, max millis, max metercount
_ROUTE = """
local kind, meter, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap, preview_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local function shown(s)
  s = string.sub(s, 1, preview_bytes)
  return (string.gsub(s, '[^\\32-\\126]', function(c)
    return string.format('\\\\x%02x', string.byte(c)) end))
end
local ktype = redis.call('TYPE', KEYS[1]).ok
if ktype == 'none' then return {'gone'} end
local value = nil
local preview
if ktype == 'string' then
  value = redis.call('GET', KEYS[1])
  preview = shown(value)
elseif ktype == 'list' then
  preview = 'list: ' .. shown(table.concat(redis.call('LRANGE', KEYS[1], 0, 9), ', '))
elseif ktype == 'set' then
  preview = 'set: ' .. shown(table.concat(redis.call('SRANDMEMBER', KEYS[1], 10), ', '))
elseif ktype == 'zset' then
  preview = 'zset: ' .. shown(table.concat(redis.call('ZRANGE', KEYS[1], 0, 9), ', '))
elseif ktype == 'hash' then
  local fields = redis.call('HSCAN', KEYS[1], 0, 'COUNT', 10)[2]
  preview = 'hash: ' .. shown(table.concat(fields, ', '))
else
  preview = ktype
end
local reason = ARGV[5]
if reason == '' then
  if value == nil then
    reason = 'key holds a Redis ' .. ktype .. ', not a string'
  elseif kind == 't' or kind == 'c' then
    local limit = (kind == 't') and ARGV[9] or ARGV[10]
    if not string.match(value, '^%d+$') then
      reason = 'value is not a whole number'
    elseif #value > #limit or tonumber(value) > tonumber(limit) then
      reason = 'value is above ' .. limit
    end
  elseif string.lower(value) ~= 'true' then
    reason = "value is not 'true'"
  end
end
if reason ~= '' then
  redis.call('DEL', KEYS[1])
  local entry = cjson.encode({key=ARGV[6], value=preview, reason=reason, at=now})
  redis.call('LPUSH', KEYS[5], entry)
  redis.call('LTRIM', KEYS[5], 0, cap - 1)
  redis.call('INCR', KEYS[6])
  return {'rejected', reason, preview}
end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[4], epoch)
end
local seq = redis.call('INCR', KEYS[3])
local item = {e=epoch, s=seq, k=kind, v=value, at=now, key=ARGV[6]}
if meter ~= '' then item.m = tonumber(meter) end
redis.call('RPUSH', KEYS[2], cjson.encode(item))
redis.call('DEL', KEYS[1])
return {'routed', seq}
"""

# Moves up to ARGV[1] items, counting those already there, from the head of the work list to
# the processing list, and returns the processing list's first ARGV[1] items.
_TAKE = """
local limit = tonumber(ARGV[1])
local want = limit - redis.call('LLEN', KEYS[2])
while want > 0 do
  local chunk = redis.call('LRANGE', KEYS[1], 0, math.min(want, 1000) - 1)
  if #chunk == 0 then break end
  redis.call('LTRIM', KEYS[1], #chunk, -1)
  redis.call('RPUSH', KEYS[2], unpack(chunk))
  want = want - #chunk
end
return redis.call('LRANGE', KEYS[2], 0, limit - 1)
"""


# Starts a new epoch, unless another process did so meanwhile. KEYS: epoch; ARGV: old, new
_NEW_EPOCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Item:
    """One unit of work: a webhook key as the router took it."""

    epoch: str
    seq: int
    kind: Kind
    meter: int | None
    value: str
    at_ms: int  # when the router took the key: when the pulse happened, to the millisecond
    key: str

    @classmethod
    def decode(cls, raw: bytes | str) -> Item:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            epoch=str(data["e"]),
            seq=int(data["s"]),
            kind=Kind(data["k"]),
            meter=int(data["m"]) if data.get("m") is not None else None,
            value=str(data["v"]),
            at_ms=int(data["at"]),
            key=str(data["key"]),
        )


@dataclass(frozen=True)
class Routed:
    outcome: str  # 'routed', 'rejected' or 'gone'
    reason: str = ""
    preview: str = ""


def new_epoch() -> str:
    return f"{time.time_ns() // 1_000_000:013d}-{os.urandom(4).hex()}"


class Queues:
    """Our Redis lists, with the scripts that move items between them."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._route = r.register_script(_ROUTE)
        self._take = r.register_script(_TAKE)
        self._new_epoch = r.register_script(_NEW_EPOCH)

    def route(
        self,
        key: bytes,
        kind: Kind,
        meter: int | None,
        shown_key: str,
        reject_reason: str = "",
        now_ms: int | None = None,
    ) -> Routed:
        """Move a webhook key onto the list for its kind, or reject it (with reject_reason
        when the key name already says it is illegal)."""
        keys, args = self._route_call(key, kind, meter, shown_key, reject_reason, now_ms)
        result = self._route(keys=keys, args=args)
        outcome = result[0].decode()
        if outcome == "rejected":
            return Routed(outcome, result[1].decode(), result[2].decode("utf-8", "replace"))
        return Routed(outcome)

    def route_in(
        self,
        pipe: redis.client.Pipeline,
        key: bytes,
        kind: Kind,
        meter: int | None,
        now_ms: int | None = None,
    ) -> None:
        """route(), queued on a pipeline: for building a backlog fast (tests, benchmark)."""
        keys, args = self._route_call(key, kind, meter, key.decode(), "", now_ms)
        self._route(keys=keys, args=args, client=pipe)

    @staticmethod
    def _route_call(
        key: bytes,
        kind: Kind,
        meter: int | None,
        shown_key: str,
        reject_reason: str,
        now_ms: int | None,
    ) -> tuple[list[object], list[object]]:
        destination = PUSH if kind is Kind.PUSH else WORK
        kind_code = kind.value if kind in ROUTED else ""
        keys: list[object] = [key, destination, SEQ, EPOCH, DEADLETTER, REJECTED]
        args: list[object] = [
            kind_code,
            "" if meter is None else meter,
            time.time_ns() // 1_000_000 if now_ms is None else now_ms,
            new_epoch(),
            reject_reason,
            shown_key,
            DEADLETTER_CAP,
            PREVIEW_BYTES,
            MAX_MILLIS,
            MAX_METERCOUNT,
        ]
        return keys, args

    def take(self, limit: int) -> list[bytes]:
        """Items to process: what the processing list holds, topped up from the work list."""
        return list(self._take(keys=[WORK, PROCESSING], args=[limit]))

    def wait_for_work(self, timeout: float) -> bool:
        """Block until an item arrives (moving it to processing), or timeout seconds pass."""
        return self.r.blmove(WORK, PROCESSING, timeout, "LEFT", "RIGHT") is not None

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

    def backlog(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(WORK)
        pipe.llen(PROCESSING)
        return sum(pipe.execute())

    def dead_letter(self, key: str, value: str, reason: str) -> None:
        """Keep a copy of input the processor could not use (the router does its own)."""
        entry = json.dumps(
            {"key": key, "value": value, "reason": reason, "at": time.time_ns() // 1_000_000}
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(DEADLETTER, entry)
        pipe.ltrim(DEADLETTER, 0, DEADLETTER_CAP - 1)
        pipe.incr(REJECTED)
        pipe.execute()
