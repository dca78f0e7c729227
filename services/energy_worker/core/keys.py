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

This module is the rules' one home: the router's Lua script (adapters/lua/route_lib.lua) is
given them as a table, rules(), rendered into it when it is loaded, and applies that table
without restating any name, kind, limit or reason. Names and values are bytes, as Redis holds
them: a name is the contract's only when it is ASCII and matches the contract's spelling after
ASCII lower-casing, so no Unicode case rule (the long s, the dotless i, the Kelvin sign) can turn
a name into another kind; digits are ASCII digits. One table of cases (tests/key_cases.py) runs
against both readings, so their code cannot drift apart either. A name that matches no rule is
ILLEGAL.
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
    # A work item's kind, never a key's: the router's record of a key it rejected (work_queue.py),
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
CHANNEL_SPELLINGS = (b"channel", b"chanel")  # older documents spell it Chanel
MAX_METER = 99  # meters are numbered 1 to MAX_METER, without leading zeros
# The words a flag's value may be, ASCII letter case aside.
WORDS = {
    Kind.DEBUG: (b"true", b"false"),
    **{kind: (b"true",) for kind in (Kind.POWERUP, Kind.STOP, Kind.PUSH)},
}
_NAME = re.compile(rb"([a-z]+):([0-9]+):([a-z]+)")  # <spelling>:<n>:<word>, as route_lib.lua's
# The reasons, word for word: the %s are filled in order, by Python's % and Lua's string.format.
UNKNOWN = "unknown key"
LEADING_ZERO = "meter number with a leading zero"
NOT_CONFIGURED = "meter %s is not configured"
NOT_WHOLE = "value is not a whole number"
ABOVE = "value is above %s"
TOO_LONG = "%s is %s bytes long (a legal one is at most %s)"
NOT_A_WORD = {
    kind: "value is not " + " or ".join(f"'{w.decode()}'" for w in words)
    for kind, words in WORDS.items()
}
# Bounds checked before anything else is read: no legal name or value is longer, so a longer
# one is rejected by its length alone (a name or value of megabytes costs no more than a short
# one). Names: the longest contract spelling, `channel:99:metercount`. Values: a reading's or a
# timestamp's digits, with up to ten leading zeros.
MAX_NAME_LENGTH = max(
    *(
        len(b"%s:%d:%s" % (spelling, MAX_METER, word))
        for spelling in CHANNEL_SPELLINGS
        for word in CHANNEL_KINDS
    ),
    *(len(name) for name in FLAG_NAMES),
)
MAX_VALUE_LENGTH = 2 * len(str(max(LIMITS.values())))


def rules() -> dict[str, object]:
    """The rules above as plain data: the router's Lua script is given this table
    (adapters/work_queue.py renders it into the script) and applies it, restating none of it."""
    return {
        "kinds": {kind.name: kind.value for kind in Kind},
        "own": OWN_PREFIX,
        "max_name": MAX_NAME_LENGTH,
        "max_value": MAX_VALUE_LENGTH,
        "flags": {name.decode(): kind.value for name, kind in FLAG_NAMES.items()},
        "spellings": {spelling.decode(): True for spelling in CHANNEL_SPELLINGS},
        "channels": {word.decode(): kind.value for word, kind in CHANNEL_KINDS.items()},
        "max_meter": MAX_METER,
        "meter_digits": len(str(MAX_METER)),
        "limits": {kind.value: str(limit) for kind, limit in LIMITS.items()},
        "words": {kind.value: {w.decode(): True for w in words} for kind, words in WORDS.items()},
        "not_a_word": {kind.value: reason for kind, reason in NOT_A_WORD.items()},
        "reasons": {
            "unknown": UNKNOWN,
            "leading_zero": LEADING_ZERO,
            "not_configured": NOT_CONFIGURED,
            "not_whole": NOT_WHOLE,
            "above": ABOVE,
            "too_long": TOO_LONG,
        },
    }


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
        return Classified(Kind.ILLEGAL, reason=UNKNOWN)
    lower = key.lower()  # bytes.lower() changes ASCII letters only, as Lua's string.lower
    flag = FLAG_NAMES.get(lower)
    if flag is not None:
        return Classified(flag)
    match = _NAME.fullmatch(lower)
    if match is None or match.group(1) not in CHANNEL_SPELLINGS:
        return Classified(Kind.ILLEGAL, reason=UNKNOWN)
    kind = CHANNEL_KINDS.get(match.group(3))
    if kind is None:
        return Classified(Kind.ILLEGAL, reason=UNKNOWN)
    digits = match.group(2)
    if len(digits) > 1 and digits.startswith(b"0"):
        return Classified(Kind.ILLEGAL, reason=LEADING_ZERO)
    if len(digits) > len(str(MAX_METER)) or not 1 <= int(digits) <= MAX_METER:
        return Classified(Kind.ILLEGAL, reason=UNKNOWN)
    meter = int(digits)
    if meter not in meters:
        return Classified(Kind.ILLEGAL, meter, reason=NOT_CONFIGURED % meter)
    return Classified(kind, meter)


def value_problem(kind: Kind, value: bytes | str) -> str | None:
    """Why a value is not legal for its kind, or None."""
    raw = _as_bytes(value)
    if kind in (Kind.FOO, Kind.OWN):
        return None
    if kind not in ROUTED and kind is not Kind.DEBUG:
        return UNKNOWN  # ILLEGAL: no value makes it legal
    if len(raw) > MAX_VALUE_LENGTH:
        return too_long("value", len(raw), MAX_VALUE_LENGTH)
    limit = LIMITS.get(kind)
    if limit is not None:
        if not (raw.isascii() and raw.isdigit()):  # bytes.isdigit(): ASCII digits only
            return NOT_WHOLE
        digits = raw.lstrip(b"0")
        if len(digits) > len(str(limit)) or int(digits or b"0") > limit:
            return ABOVE % limit
        return None
    return None if raw.lower() in WORDS[kind] else NOT_A_WORD[kind]


def too_long(what: str, length: int, limit: int) -> str:
    return TOO_LONG % (what, length, limit)
