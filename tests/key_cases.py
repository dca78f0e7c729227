"""One table of key-name and value cases, run against both readings of the input contract: the
Python rules (keys.classify and keys.value_problem, test_keys.py) and the router's Lua script
(adapters/lua/route_lib.lua, test_work_queue.py). Also the hypothesis strategies that generate more
of them."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from energy_worker.core.keys import Kind, classify, too_long, value_problem

METERS = frozenset(range(1, 8))


@dataclass(frozen=True)
class Outcome:
    """What the router does with a key: 'routed' (as kind, for meter), 'rejected' (reason) or
    'left' (kind)."""

    action: str
    kind: Kind | None = None
    meter: int | None = None
    reason: str = ""


def routed(kind: Kind, meter: int | None = None) -> Outcome:
    return Outcome("routed", kind, meter)


def rejected(reason: str) -> Outcome:
    return Outcome("rejected", reason=reason)


def left(kind: Kind) -> Outcome:
    return Outcome("left", kind)


UNKNOWN = rejected("unknown key")
NOT_WHOLE = rejected("value is not a whole number")
NOT_TRUE = rejected("value is not 'true'")
LEADING_ZERO = rejected("meter number with a leading zero")

# (key, value, outcome). Keys and values are bytes, as Redis holds them.
CASES: list[tuple[bytes, bytes, Outcome]] = [
    # the contract's spelling, ASCII letter case aside, and the older spelling
    (b"channel:1:timestamp", b"1000", routed(Kind.TIMESTAMP, 1)),
    (b"Chanel:7:Timestamp", b"123", routed(Kind.TIMESTAMP, 7)),
    (b"CHANNEL:3:METERCOUNT", b"27997", routed(Kind.METERCOUNT, 3)),
    (b"chanel:2:MeterCount", b"0", routed(Kind.METERCOUNT, 2)),
    (b"powerup", b"true", routed(Kind.POWERUP)),
    (b"STOP", b"TRUE", routed(Kind.STOP)),
    (b"pushToGoogle", b"True", routed(Kind.PUSH)),
    (b"debug", b"false", left(Kind.DEBUG)),
    (b"DEBUG", b"TRUE", left(Kind.DEBUG)),
    (b"foo", b"bar", left(Kind.FOO)),
    (b"foo", b"\xff anything", left(Kind.FOO)),
    (b"energy-worker:something", b"x", left(Kind.OWN)),
    # Unicode case-folding traps: only ASCII letters fold, so none of these is a contract key
    ("channel:7:timeſtamp".encode(), b"7575556", UNKNOWN),  # U+017F long s
    ("channel:7:tımestamp".encode(), b"7575556", UNKNOWN),  # U+0131 dotless i
    ("channel:7:tİmestamp".encode(), b"7575556", UNKNOWN),  # U+0130 capital I with dot
    ("channel:7:metercount".replace("c", "с", 1).encode(), b"1", UNKNOWN),  # Cyrillic es
    ("ſtop".encode(), b"true", UNKNOWN),
    ("pushtogooglе".encode(), b"true", UNKNOWN),  # Cyrillic ie
    ("channel:1:timeﬆamp".encode(), b"1", UNKNOWN),  # U+FB06 ligature st
    ("channeK:1:timestamp".replace("K", "\u212a").encode(), b"1", UNKNOWN),  # Kelvin sign
    ("debuK".replace("K", "\u212a").encode(), b"true", UNKNOWN),
    ("POWERUP".replace("P", "Ｐ").encode(), b"true", UNKNOWN),  # fullwidth P
    # digits that are not ASCII digits, leading zeros, meters not configured
    ("channel:٧:timestamp".encode(), b"1", UNKNOWN),  # Arabic-Indic seven
    ("channel:１:timestamp".encode(), b"1", UNKNOWN),  # fullwidth one
    (b"channel:07:timestamp", b"1", LEADING_ZERO),
    (b"channel:01:timestamp", b"1", LEADING_ZERO),
    (b"Chanel:007:MeterCount", b"1", LEADING_ZERO),
    (b"channel:00:timestamp", b"1", LEADING_ZERO),
    (b"channel:010:timestamp", b"1", LEADING_ZERO),
    (b"channel:01:timestamps", b"1", UNKNOWN),  # not a channel word: unknown, whatever the n
    (b"channel:0:timestamp", b"1", UNKNOWN),
    (b"channel:9:timestamp", b"100", rejected("meter 9 is not configured")),
    (b"channel:99:metercount", b"100", rejected("meter 99 is not configured")),
    (b"channel:100:timestamp", b"1", UNKNOWN),
    (b"channel:" + b"9" * 5000 + b":timestamp", b"1", rejected(too_long("name", 5018, 21))),
    (b"channel::timestamp", b"1", UNKNOWN),
    (b"channel:1:timestamps", b"1", UNKNOWN),
    (b"channel:1:", b"1", UNKNOWN),
    (b"channnel:1:timestamp", b"1", UNKNOWN),
    # surrounding white space, a trailing newline, NUL, very long names, not UTF-8
    (b" channel:1:timestamp", b"1", UNKNOWN),
    (b"channel:1:timestamp ", b"1", UNKNOWN),
    (b"channel:1:timestamp\n", b"1", UNKNOWN),
    (b"stop\n", b"true", UNKNOWN),
    (b"stop\x00", b"true", UNKNOWN),
    (b"channel:1:" + b"timestamp" * 1000, b"1", rejected(too_long("name", 9010, 21))),
    (b"x" * 10_000, b"1", rejected(too_long("name", 10_000, 21))),
    # the longest legal name, and one byte more, however it ends
    (b"CHANNEL:99:METERCOUNT", b"1", rejected("meter 99 is not configured")),
    (b"channel:1:metercount ", b"1", UNKNOWN),
    (b"channel:99:metercount:", b"1", rejected(too_long("name", 22, 21))),
    (b"channel:99:metercount\xff", b"1", rejected(too_long("name", 22, 21))),
    ("channel:1:metercountæ".encode(), b"1", rejected(too_long("name", 22, 21))),
    (b"energy-worker:" + b"x" * 100, b"1", left(Kind.OWN)),  # our namespace: never touched
    (b"\xff\xfe", b"1", UNKNOWN),
    (b"hello", b"world", UNKNOWN),
    (b"", b"1", UNKNOWN),
    # values
    (b"channel:1:timestamp", b"0", routed(Kind.TIMESTAMP, 1)),
    (b"channel:1:timestamp", b"4294967295", routed(Kind.TIMESTAMP, 1)),
    (b"channel:1:timestamp", b"0004294967295", routed(Kind.TIMESTAMP, 1)),
    (b"channel:1:timestamp", b"4294967296", rejected("value is above 4294967295")),
    (b"channel:1:timestamp", b"9" * 11, rejected("value is above 4294967295")),
    (b"channel:1:timestamp", b"0" * 19 + b"1", routed(Kind.TIMESTAMP, 1)),
    # a value longer than any legal one, whatever it holds
    (b"channel:1:timestamp", b"0" * 20 + b"1", rejected(too_long("value", 21, 20))),
    (b"channel:1:timestamp", b"9" * 400, rejected(too_long("value", 400, 20))),
    (b"stop", b"true" + b" " * 17, rejected(too_long("value", 21, 20))),
    (b"debug", b"\x01" * 5000, rejected(too_long("value", 5000, 20))),
    (b"foo", b"x" * 5000, left(Kind.FOO)),
    (b"channel:1:timestamp", b"-5", NOT_WHOLE),
    (b"channel:1:timestamp", b"+5", NOT_WHOLE),
    (b"channel:1:timestamp", b"12.5", NOT_WHOLE),
    (b"channel:1:timestamp", b"1e3", NOT_WHOLE),
    (b"channel:1:timestamp", b"", NOT_WHOLE),
    (b"channel:1:timestamp", b" 12", NOT_WHOLE),
    (b"channel:1:timestamp", b"12\n", NOT_WHOLE),
    (b"channel:1:timestamp", "١٢".encode(), NOT_WHOLE),  # Arabic-Indic digits
    (b"channel:1:timestamp", "１２".encode(), NOT_WHOLE),  # fullwidth digits
    (b"channel:1:timestamp", b"\xff\xfe", NOT_WHOLE),
    (b"channel:3:metercount", b"9999999", routed(Kind.METERCOUNT, 3)),
    (b"channel:3:metercount", b"10000000", rejected("value is above 9999999")),
    (b"stop", b"please", NOT_TRUE),
    (b"stop", b"true ", NOT_TRUE),
    (b"stop", b"true\n", NOT_TRUE),
    (b"stop", "truе".encode(), NOT_TRUE),  # Cyrillic ie
    (b"stop", "TRUE".replace("T", "Ｔ").encode(), NOT_TRUE),
    (b"powerup", b"1", NOT_TRUE),
    (b"debug", b"maybe", rejected("value is not 'true' or 'false'")),
    (b"debug", b" true", rejected("value is not 'true' or 'false'")),
]


def python_outcome(key: bytes, value: bytes, meters: frozenset[int] = METERS) -> Outcome:
    """What the Python rules say the router does with a string key holding `value`."""
    found = classify(key, meters)
    if found.kind in (Kind.OWN, Kind.FOO):
        return left(found.kind)
    if found.kind is Kind.ILLEGAL:
        return rejected(found.reason)
    problem = value_problem(found.kind, value)
    if problem is not None:
        return rejected(problem)
    if found.kind is Kind.DEBUG:
        return left(Kind.DEBUG)
    return routed(found.kind, found.meter)


# --- generated cases -------------------------------------------------------------------------

# Letters and their look-alikes that Unicode case rules fold onto ASCII ones.
TRAPS = {"s": ["ſ", "S"], "i": ["ı", "İ", "I"], "k": ["\u212a", "K"], "t": ["T"], "e": ["E", "е"]}
WORDS = ["channel", "chanel", "timestamp", "metercount", "powerup", "stop", "pushtogoogle"]
WORDS += ["debug", "foo", "energy-worker:x"]


@st.composite
def trapped_word(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(WORDS))
    letters = []
    for letter in word:
        options = [letter, letter.upper(), *TRAPS.get(letter, [])]
        letters.append(draw(st.sampled_from(options)) if draw(st.booleans()) else letter)
    if draw(st.integers(0, 9)) == 0:
        word = word.replace("st", "ﬆ")
    return "".join(letters)


meter_numbers = st.one_of(
    st.integers(0, 120).map(str),
    st.sampled_from(["07", "٧", "１", "", "1 ", "3\n"]),
)
key_names = st.one_of(
    trapped_word(),
    st.builds(lambda a, n, b: f"{a}:{n}:{b}", trapped_word(), meter_numbers, trapped_word()),
    st.text(max_size=30),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
values = st.one_of(
    st.integers(0, 2**40).map(lambda n: str(n).encode()),
    st.sampled_from([b"true", b"TRUE", b"false", "truе".encode(), b"", b" 1", b"1\n", b"007"]),
    st.binary(max_size=20),
    st.text(max_size=12).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
