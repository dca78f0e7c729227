"""The input contract: what a Redis key written by the webhook means (pure; docs/DOMAIN.md).

| key (ASCII letter case aside) | kind       | value                                 |
|-------------------------------|------------|---------------------------------------|
| channel:<n>:timestamp         | TIMESTAMP  | millis() of the pulse, 0 .. 2^32-1    |
| channel:<n>:metercount        | METERCOUNT | reading x 100, 0 .. 9999999           |
| powerup / stop / pushtogoogle | POWERUP .. | true                                  |
| debug                         | DEBUG      | true / false, left for the webhook    |
| foo                           | FOO        | the webhook's self-test, left alone   |
| energy-worker:...             | OWN        | our own lists and counters            |
Older documents spell the channel `Chanel`; both are accepted. <n> is a configured meter number
written without leading zeros (`channel:01:timestamp` is rejected as such, by that reason).
Anything else is ILLEGAL.

Names and values are bytes, as Redis holds them, and are read the way the router's Lua script
reads them (queue.py): a name is the contract's only when it is ASCII and matches the contract's
spelling after ASCII lower-casing, so no Unicode case rule (the long s, the dotless i, the Kelvin
sign) can turn a name into another kind; digits are ASCII digits. One table of cases
(tests/key_cases.py) runs against both, so the two cannot drift apart. Every kind is reached by
a branch that names it; a name that matches none is ILLEGAL.
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
    # A work item's kind, never a key's: the router's record of a key it rejected (queue.py),
    # so that the processor keeps it in PostgreSQL. classify() never returns it.
    REJECTED = "r"


# Kinds the router hands on, in the order it routes keys found together in one sweep: a
# rebooted Arduino sends powerup before its first new pulse, and stop goes last.
ROUTED = (Kind.POWERUP, Kind.METERCOUNT, Kind.TIMESTAMP, Kind.PUSH, Kind.STOP)
LEFT_ALONE = (Kind.DEBUG, Kind.FOO, Kind.OWN)
# Values: the flags take 'true', debug 'true' or 'false', the channels a whole number.
LIMITS = {Kind.TIMESTAMP: MAX_MILLIS, Kind.METERCOUNT: MAX_METERCOUNT}
FLAG_NAMES = {
    b"powerup": Kind.POWERUP,
    b"stop": Kind.STOP,
    b"pushtogoogle": Kind.PUSH,
    b"debug": Kind.DEBUG,
    b"foo": Kind.FOO,
}
CHANNEL_KINDS = {b"timestamp": Kind.TIMESTAMP, b"metercount": Kind.METERCOUNT}
_CHANNEL = re.compile(rb"chann?el:([0-9]+):([a-z]+)")
LEADING_ZERO = "meter number with a leading zero"
# Bounds checked before anything else is read: no legal name or value is longer, so a longer
# one is rejected by its length alone (a name or value of megabytes costs no more than a short
# one). Names: the longest contract spelling, `channel:99:metercount`. Values: a reading's or a
# timestamp's digits, with up to ten leading zeros.
MAX_NAME_LENGTH = max(
    *(len(b"channel:99:" + word) for word in CHANNEL_KINDS), *(len(name) for name in FLAG_NAMES)
)
MAX_VALUE_LENGTH = 2 * len(str(max(LIMITS.values())))


@dataclass(frozen=True)
class Classified:
    kind: Kind
    meter: int | None = None
    reason: str = ""  # why it is illegal


def _as_bytes(name: bytes | str) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def classify(name: bytes | str, meters: frozenset[int] | set[int]) -> Classified:
    """Classify a key name; `meters` are the configured meter numbers."""
    key = _as_bytes(name)
    if key.startswith(OWN_PREFIX.encode()):
        return Classified(Kind.OWN)
    if len(key) > MAX_NAME_LENGTH:
        return Classified(Kind.ILLEGAL, reason=too_long("name", len(key), MAX_NAME_LENGTH))
    if not key.isascii():
        return Classified(Kind.ILLEGAL, reason="unknown key")
    lower = key.lower()  # bytes.lower() changes ASCII letters only, as Lua's string.lower
    flag = FLAG_NAMES.get(lower)
    if flag is not None:
        return Classified(flag)
    match = _CHANNEL.fullmatch(lower)
    kind = CHANNEL_KINDS.get(match.group(2)) if match else None
    if match is None or kind is None:
        return Classified(Kind.ILLEGAL, reason="unknown key")
    digits = match.group(1)
    if len(digits) > 1 and digits.startswith(b"0"):
        return Classified(Kind.ILLEGAL, reason=LEADING_ZERO)
    if digits == b"0" or len(digits) > 2:  # meters are numbered 1 to 99
        return Classified(Kind.ILLEGAL, reason="unknown key")
    meter = int(digits)
    if meter not in meters:
        return Classified(Kind.ILLEGAL, meter, reason=f"meter {meter} is not configured")
    return Classified(kind, meter)


def value_problem(kind: Kind, value: bytes | str) -> str | None:
    """Why a value is not legal for its kind, or None."""
    raw = _as_bytes(value)
    if kind in (Kind.FOO, Kind.OWN):
        return None
    if kind not in ROUTED and kind is not Kind.DEBUG:
        return "unknown key"  # ILLEGAL: no value makes it legal
    if len(raw) > MAX_VALUE_LENGTH:
        return too_long("value", len(raw), MAX_VALUE_LENGTH)
    limit = LIMITS.get(kind)
    if limit is not None:
        if not (raw.isascii() and raw.isdigit()):  # bytes.isdigit(): ASCII digits only
            return "value is not a whole number"
        digits = raw.lstrip(b"0")
        if len(digits) > len(str(limit)) or int(digits or b"0") > limit:
            return f"value is above {limit}"
        return None
    if kind is Kind.DEBUG:
        return None if raw.lower() in (b"true", b"false") else "value is not 'true' or 'false'"
    return None if raw.lower() == b"true" else "value is not 'true'"  # the flags


def too_long(what: str, length: int, limit: int) -> str:
    return f"{what} is {length} bytes long (a legal one is at most {limit})"
