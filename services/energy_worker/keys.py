"""What a Redis key written by the webhook means: the input contract, as a pure function.

| key (any letter case)        | kind        | value                                  |
|------------------------------|-------------|----------------------------------------|
| channel:<n>:timestamp        | TIMESTAMP   | millis() of the pulse, 0 .. 2^32-1     |
| channel:<n>:metercount       | METERCOUNT  | reading x 100, 0 .. 9999999            |
| powerup / stop / pushtogoogle| POWERUP ... | true                                   |
| debug                        | DEBUG       | true / false, left for the webhook     |
| foo                          | FOO         | the webhook's self-test, left alone    |
| energy-worker:...            | OWN         | our own lists and counters             |
Older documents spell the channel `Chanel`; both are accepted. Anything else is ILLEGAL.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

OWN_PREFIX = "energy-worker:"
MAX_MILLIS = 2**32 - 1
MAX_METERCOUNT = 9_999_999


class Kind(enum.Enum):
    TIMESTAMP = "t"
    METERCOUNT = "c"
    POWERUP = "p"
    STOP = "x"
    PUSH = "g"
    DEBUG = "debug"
    FOO = "foo"
    OWN = "own"
    ILLEGAL = "illegal"


# Kinds the router hands on, in the order it routes keys found together in one sweep: a
# rebooted Arduino sends powerup before its first new pulse, and stop goes last.
ROUTED = (Kind.POWERUP, Kind.METERCOUNT, Kind.TIMESTAMP, Kind.PUSH, Kind.STOP)
LEFT_ALONE = (Kind.DEBUG, Kind.FOO, Kind.OWN)

_FLAGS = {"powerup": Kind.POWERUP, "stop": Kind.STOP, "pushtogoogle": Kind.PUSH}
_CHANNEL = re.compile(r"chann?el:([0-9]{1,2}):(timestamp|metercount)", re.IGNORECASE)


@dataclass(frozen=True)
class Classified:
    kind: Kind
    meter: int | None = None
    reason: str = ""  # why it is illegal


def classify(key: str, meters: frozenset[int] | set[int]) -> Classified:
    """Classify a key name; `meters` are the configured meter numbers."""
    if key.startswith(OWN_PREFIX):
        return Classified(Kind.OWN)
    lower = key.lower()
    if lower in _FLAGS:
        return Classified(_FLAGS[lower])
    if lower == "debug":
        return Classified(Kind.DEBUG)
    if lower == "foo":
        return Classified(Kind.FOO)
    match = _CHANNEL.fullmatch(key)
    if match is None:
        return Classified(Kind.ILLEGAL, reason="unknown key")
    meter = int(match.group(1))
    if meter not in meters:
        return Classified(Kind.ILLEGAL, meter, reason=f"meter {meter} is not configured")
    kind = Kind.TIMESTAMP if match.group(2).lower() == "timestamp" else Kind.METERCOUNT
    return Classified(kind, meter)


def value_problem(kind: Kind, value: str) -> str | None:
    """Why a value is not legal for its kind, or None. (The router checks the same rules
    atomically in Lua, see queue.py; this is the reference and what the tests pin.)"""
    if kind in (Kind.TIMESTAMP, Kind.METERCOUNT):
        limit = MAX_MILLIS if kind is Kind.TIMESTAMP else MAX_METERCOUNT
        if not (value.isascii() and value.isdigit()):
            return "value is not a whole number"
        if len(value) > len(str(limit)) or int(value) > limit:
            return f"value is above {limit}"
        return None
    if kind in (Kind.POWERUP, Kind.STOP, Kind.PUSH):
        return None if value.lower() == "true" else "value is not 'true'"
    if kind is Kind.DEBUG:
        return None if value.lower() in ("true", "false") else "value is not 'true' or 'false'"
    return None
