"""The Redis side of the pipeline: our keys, the work item format, and the atomic moves.

Every move of a pulse is one Lua script, so at any instant a pulse is in exactly one place:
its webhook key, the work list, the processor's processing list, or committed in PostgreSQL.
Items carry (epoch, seq): seq increases by one per routed item, and epoch changes only when
Redis lost its data, so the processor can tell an item it has already committed (see
processor.py). Epochs start with the time they were made, so a newer epoch sorts later.

The route script reads a key the way keys.classify and keys.value_problem do; one table of
cases (tests/key_cases.py) runs against both.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import redis
import redis.client

from energy_worker.core.keys import (
    MAX_METERCOUNT,
    MAX_MILLIS,
    MAX_NAME_LENGTH,
    MAX_VALUE_LENGTH,
    OWN_PREFIX,
    Kind,
)

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

# The router's reading of a key, shared by the scripts that route (_ROUTE, _SCAN): route(key)
# reads its name and value as keys.py does, and either moves it onto the list for its kind as a
# numbered item, removes it with a copy and the reason in the dead-letter list, or leaves it
# (the webhook's debug switch and self-test, our own keys). A rejected key also leaves a
# numbered item of kind 'r' (value: the preview, with the reason and the printable key) on the
# work list, so that the processor keeps it in PostgreSQL exactly once. A name or a value longer
# than any legal one is rejected by its length, read without reading the whole of it (STRLEN,
# GETRANGE), and so is a key of another type (only its size is shown). A `pushtogoogle` while
# a request waits on the push list joins it: the pusher reads the readings when it takes it.
# The scripts set W, P, SEQ, EPOCH, DL, RJ (the work, push and dead-letter lists, the counters)
# from their KEYS; ARGV[1..10]: now_ms, epoch candidate, ',<meter>,...,' (the configured
# meters), dead-letter cap, preview bytes, max millis, max metercount, our own prefix, max name
# length, max value length.
# route() returns {'routed', kind, seq} | {'joined', 'g'} | {'rejected', reason, preview} |
# {'left', kind[, value]} | {'gone'}: a debug key is left with its value, for the router.
_ROUTE_LIB = r"""
local now, meters = tonumber(ARGV[1]), ARGV[3]
local cap, preview_bytes, own = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[8]
local max_name, max_value = tonumber(ARGV[9]), tonumber(ARGV[10])
local limits = {t = ARGV[6], c = ARGV[7]}
local flags = {powerup = 'p', stop = 'x', pushtogoogle = 'g', debug = 'debug', foo = 'foo'}
local channels = {timestamp = 't', metercount = 'c'}
local sizes = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'}

local function printable(s)
  s = string.sub(s, 1, preview_bytes)
  return (string.gsub(s, '[^\32-\126]', function(c)
    return string.format('\\x%02x', string.byte(c)) end))
end

local function too_long(what, length, limit)
  return what .. ' is ' .. length .. ' bytes long (a legal one is at most ' .. limit .. ')'
end

-- keys.classify: kind, meter, reason
local function classify(name)
  if string.sub(name, 1, #own) == own then return 'own' end
  if #name > max_name then return 'illegal', nil, too_long('name', #name, max_name) end
  if string.find(name, '[\128-\255]') then return 'illegal', nil, 'unknown key' end
  local lower = string.lower(name)
  if flags[lower] then return flags[lower] end
  local n, word = string.match(lower, '^chann?el:(%d+):(%l+)$')
  local kind = word and channels[word]
  if not kind then return 'illegal', nil, 'unknown key' end
  if #n > 1 and string.sub(n, 1, 1) == '0' then
    return 'illegal', nil, 'meter number with a leading zero'
  end
  if n == '0' or #n > 2 then return 'illegal', nil, 'unknown key' end
  if not string.find(meters, ',' .. n .. ',', 1, true) then
    return 'illegal', n, 'meter ' .. n .. ' is not configured'
  end
  return kind, n
end

-- keys.value_problem (after the length, checked before the value is read): nil when legal
local function value_problem(kind, value)
  local limit = limits[kind]
  if limit then
    if not string.match(value, '^%d+$') then return 'value is not a whole number' end
    local digits = string.gsub(value, '^0+', '')
    if #digits > #limit or (tonumber(digits) or 0) > tonumber(limit) then
      return 'value is above ' .. limit
    end
    return nil
  end
  local lower = string.lower(value)
  if kind == 'debug' then
    if lower == 'true' or lower == 'false' then return nil end
    return "value is not 'true' or 'false'"
  end
  if lower ~= 'true' then return "value is not 'true'" end
  return nil
end

-- What a rejected key held, bounded: a string's first bytes, another type's size.
local function preview_of(key, ktype)
  if ktype == 'string' then
    return printable(redis.call('GETRANGE', key, 0, preview_bytes - 1))
  end
  local size = sizes[ktype]
  if size then return ktype .. ' of ' .. redis.call(size, key) .. ' item(s)' end
  return ktype
end

-- The next item's epoch and sequence number.
local function numbered()
  local epoch = redis.call('GET', EPOCH)
  if not epoch then
    epoch = ARGV[2]
    redis.call('SET', EPOCH, epoch)
  end
  return epoch, redis.call('INCR', SEQ)
end

local function route(key)
  local ktype = redis.call('TYPE', key).ok
  if ktype == 'none' then return {'gone'} end
  local kind, meter, reason = classify(key)
  if kind == 'own' or kind == 'foo' then return {'left', kind} end
  local value = nil
  if reason == nil then
    if ktype ~= 'string' then
      reason = 'key holds a Redis ' .. ktype .. ', not a string'
    else
      local length = redis.call('STRLEN', key)
      if length > max_value then
        reason = too_long('value', length, max_value)
      else
        value = redis.call('GET', key)
        reason = value_problem(kind, value)
      end
    end
  end
  if reason == nil and kind == 'debug' then return {'left', kind, value} end
  if reason ~= nil then
    local preview = preview_of(key, ktype)
    local shown = printable(key)
    redis.call('DEL', key)
    local entry = cjson.encode({key = shown, value = preview, reason = reason, at = now})
    redis.call('LPUSH', DL, entry)
    redis.call('LTRIM', DL, 0, cap - 1)
    redis.call('INCR', RJ)
    local epoch, seq = numbered()
    redis.call('RPUSH', W, cjson.encode(
      {e = epoch, s = seq, k = 'r', v = preview, reason = reason, at = now, key = shown}))
    return {'rejected', reason, preview}
  end
  if kind == 'g' and redis.call('LLEN', P) > 0 then
    redis.call('DEL', key)
    return {'joined', kind}
  end
  local epoch, seq = numbered()
  local item = {e = epoch, s = seq, k = kind, v = value, at = now, key = key}
  if meter then item.m = tonumber(meter) end
  local destination = W
  if kind == 'g' then destination = P end
  redis.call('RPUSH', destination, cjson.encode(item))
  redis.call('DEL', key)
  return {'routed', kind, seq}
end
"""

# Routes one key. KEYS: key, work list, push list, seq, epoch, dead-letter list, rejected counter
_ROUTE = (
    "local W, P, SEQ, EPOCH, DL, RJ = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]\n"
    + _ROUTE_LIB
    + "return route(KEYS[1])\n"
)

# One step of the router's sweep: SCAN from the cursor ARGV[11] (COUNT ARGV[12]), and the names
# of one side, read as route() reads them: ARGV[13] 'legal' (what the router routes or follows:
# not our own keys, not the webhook's self-test) or 'illegal'. A name longer than any legal one
# is never returned, so that the router never receives it: the 'illegal' side routes (rejects)
# it here. Filtered here, a flood of junk costs the router nothing while it looks for the legal
# keys. KEYS: as _ROUTE's, without the key (the keys scanned are the database's: it is ours and
# the webhook's alone). Returns {next cursor, names, {excerpt, length, reason} of each long name
# rejected}.
_SCAN = (
    "local W, P, SEQ, EPOCH, DL, RJ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]\n"
    + _ROUTE_LIB
    + r"""
local found = redis.call('SCAN', ARGV[11], 'COUNT', ARGV[12])
local want_illegal = ARGV[13] == 'illegal'
local names, long = {}, {}
for _, name in ipairs(found[2]) do
  if #name > max_name then
    if want_illegal and string.sub(name, 1, #own) ~= own then
      local result = route(name)
      if result[1] == 'rejected' then
        table.insert(long, {printable(name), #name, result[2]})
      end
    end
  else
    local kind = classify(name)
    if (kind == 'illegal') == want_illegal and kind ~= 'own' and kind ~= 'foo' then
      table.insert(names, name)
    end
  end
end
return {found[1], names, long}
"""
)


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
            MAX_MILLIS,
            MAX_METERCOUNT,
            OWN_PREFIX,
            MAX_NAME_LENGTH,
            MAX_VALUE_LENGTH,
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
