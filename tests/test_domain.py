"""The domain's types (services/energy_worker/core/domain.py) alone: times in ms, the work item's
decoder and each of its refusals, dead letters and printable text, and the small properties.
Arbitrary bytes fed to the decoder are tests/test_hostile_input.py's; items the router really
writes are tests/test_work_queue.py's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from energy_worker.core.domain import (
    EPOCH_START,
    MAX_AT_MS,
    MAX_EPOCH_CHARS,
    MAX_SEQ,
    MAX_TEXT_CHARS,
    DeadLetter,
    Item,
    MeterRecord,
    MeterSnapshot,
    MeterState,
    Run,
    at_time,
    ms_since_1970,
    printable,
)
from energy_worker.core.keys import Kind

T0 = 1_795_000_000_123  # ms since 1970, not a whole second


# --- times in ms --------------------------------------------------------------------------------


@pytest.mark.parametrize("ms", [0, 1, 999, T0, MAX_AT_MS - 1, MAX_AT_MS])
def test_ms_and_datetime_round_trip_exactly(ms: int):
    at = at_time(ms)
    assert at.tzinfo is not None
    assert ms_since_1970(at) == ms


def test_the_edges_are_1970_and_the_last_millisecond_a_datetime_holds():
    assert at_time(0) == datetime(1970, 1, 1, tzinfo=UTC) == EPOCH_START
    assert at_time(MAX_AT_MS) == datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    with pytest.raises(OverflowError):
        at_time(MAX_AT_MS + 1)


def test_a_millisecond_is_never_rounded_through_a_float():
    # 2**53 + 1 ms is not a float; nor is the microsecond below a millisecond kept
    assert ms_since_1970(at_time(T0)) - ms_since_1970(at_time(T0 - 1)) == 1
    assert at_time(T0).microsecond == 123_000
    assert ms_since_1970(at_time(T0) + timedelta(microseconds=999)) == T0  # floor, not round
    assert ms_since_1970(at_time(T0) - timedelta(microseconds=1)) == T0 - 1


def test_ms_of_a_time_in_another_zone_is_the_same_instant():
    at = at_time(T0)
    other = at.astimezone(timezone(timedelta(hours=-9, minutes=-30)))
    assert ms_since_1970(other) == T0


# --- the work item ------------------------------------------------------------------------------


def router_item(**fields: Any) -> dict[str, Any]:
    """The fields of an item as adapters/lua/route_lib.lua's route() writes a pulse's."""
    item = {"e": "lq8w3zA.1:x-y", "s": 7, "k": "t", "v": "123456", "at": T0}
    item |= {"key": "channel:3:timestamp", "m": 3}
    return item | fields


def decode(data: object) -> Item:
    return Item.decode(json.dumps(data))


def test_an_item_as_the_router_writes_it_decodes_field_by_field():
    item = Item.decode(json.dumps(router_item()).encode())
    assert item == Item("lq8w3zA.1:x-y", 7, Kind.TIMESTAMP, 3, "123456", T0, "channel:3:timestamp")
    assert item.reason == ""


def test_an_item_without_a_meter_and_a_rejected_key_with_its_reason():
    data = router_item(k="r", v="\\x00abc", key="bad\\x00", reason="no such key")
    del data["m"]
    item = decode(data)
    assert (item.kind, item.meter, item.reason) == (Kind.REJECTED, None, "no such key")
    assert decode(router_item(m=None)).meter is None  # JSON null is no meter either


@pytest.mark.parametrize("missing", ["e", "s", "k", "v", "at", "key"])
def test_a_missing_field_is_named(missing: str):
    data = router_item()
    del data[missing]
    with pytest.raises(ValueError, match=f"^no field '{missing}'$"):
        decode(data)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        # whole numbers: a bool is an int to Python, 1e3 arrives as a float
        ("s", True, "s is not a whole number from 1 to"),
        ("s", 7.0, "s is not a whole number"),
        ("s", "7", "s is not a whole number"),
        ("s", 0, "s is not a whole number"),
        ("s", MAX_SEQ + 1, "s is not a whole number"),
        ("m", False, "m is not a whole number from 0 to 99"),
        ("m", -1, "m is not a whole number"),
        ("m", 100, "m is not a whole number"),
        ("m", 3.0, "m is not a whole number"),
        ("at", float(T0), "at is not a whole number"),
        ("at", 1e17, "at is not a whole number"),
        ("at", -1, "at is not a whole number"),
        ("at", MAX_AT_MS + 1, "at is not a whole number"),
        ("at", True, "at is not a whole number"),
        ("at", None, "at is not a whole number"),
        # texts
        ("v", 123456, "v is not a text of at most"),
        ("v", None, "v is not a text"),
        ("key", ["channel:3:timestamp"], "key is not a text"),
        ("reason", 1, "reason is not a text"),
        ("v", "x" * (MAX_TEXT_CHARS + 1), f"v is not a text of at most {MAX_TEXT_CHARS} "),
        # epochs
        ("e", "", "e is not an epoch"),
        ("e", "a b", "e is not an epoch"),
        ("e", "ep\u00f8ch", "e is not an epoch"),
        ("e", "a" * (MAX_EPOCH_CHARS + 1), "e is not an epoch"),
        ("e", 12, "e is not an epoch"),
        # kinds
        ("k", "nope", "is not a valid Kind"),
        ("k", ["t"], "is not a valid Kind|a field of the wrong type"),  # unhashable: by version
        ("k", {"t": 1}, "is not a valid Kind|a field of the wrong type"),
    ],
)
def test_each_field_out_of_its_range_or_type_is_refused_with_its_reason(
    field: str, value: object, reason: str
):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")) as caught:
        decode(router_item(**{field: value}))
    assert type(caught.value) is ValueError  # not a subclass a caller might not expect


@pytest.mark.parametrize(
    ("field", "value"),
    [("s", 1), ("s", MAX_SEQ), ("m", 0), ("m", 99), ("at", 0), ("at", MAX_AT_MS),
     ("e", "a" * MAX_EPOCH_CHARS), ("v", "x" * MAX_TEXT_CHARS), ("v", "\u00e6\U0001f600\x00")],
)  # fmt: skip
def test_the_edges_of_each_range_are_accepted(field: str, value: object):
    attribute = {"e": "epoch", "s": "seq", "m": "meter", "at": "at_ms", "v": "value"}[field]
    assert getattr(decode(router_item(**{field: value})), attribute) == value


@pytest.mark.parametrize("field", ["v", "key", "reason"])
def test_a_lone_surrogate_is_not_valid_unicode(field: str):
    raw = json.dumps(router_item(**{field: "a"})).replace('"a"', '"\\ud800"')
    with pytest.raises(ValueError, match=f"^{field} is not valid Unicode$"):
        Item.decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"item"', b"null", b"true"])
def test_json_that_is_not_an_object_is_refused(raw: bytes):
    with pytest.raises(ValueError, match=r"^not a JSON object$"):
        Item.decode(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON (JSONDecodeError)"),
        (b"{", "not JSON (JSONDecodeError)"),
        (b'{"e": NaN', "not JSON (JSONDecodeError)"),
        (b"\x80{}", "not JSON (UnicodeDecodeError)"),
        (b"\xff\xfe{}", "not JSON (JSONDecodeError)"),  # read as UTF-16 (its BOM): not JSON then
        (b'{"v": "\xc3"}', "not JSON (UnicodeDecodeError)"),
    ],
)
def test_bytes_that_are_not_json_are_refused(raw: bytes, reason: str):
    with pytest.raises(ValueError) as caught:
        Item.decode(raw)
    assert str(caught.value) == reason


def test_json_nested_too_deep_is_refused_not_a_crash():
    with pytest.raises(ValueError, match=r"^JSON nested too deep$"):
        Item.decode("[" * 100_000 + "]" * 100_000)


def test_a_huge_number_is_refused_not_an_overflow():
    raw = json.dumps(router_item()).replace(f'"at": {T0}', '"at": 1e999')
    with pytest.raises(ValueError, match=r"^at is not a whole number"):
        Item.decode(raw)


# --- dead letters and printable text ------------------------------------------------------------


def test_printable_ascii_is_kept_as_it_is():
    ascii_text = "".join(chr(c) for c in range(0x20, 0x7F))
    assert printable(ascii_text, limit=1000) == ascii_text
    assert printable("channel:1:timestamp\\x00") == "channel:1:timestamp\\x00"  # already made so


def test_every_other_character_is_its_utf8_bytes_as_xNN():
    assert printable("\x00") == "\\x00"
    assert printable("\t\n\x7f") == "\\x09\\x0a\\x7f"
    assert printable("\u00e6") == "\\xc3\\xa6"
    assert printable("\U0001f600") == "\\xf0\\x9f\\x98\\x80"
    assert printable("\ud800") == "\\xed\\xa0\\x80"  # a lone surrogate too, never an error


def test_printable_keeps_the_first_limit_characters():
    assert printable("abcdef", limit=3) == "abc"
    assert printable("\u00e6\u00e6\u00e6", limit=2) == "\\xc3\\xa6" * 2  # characters, not bytes
    assert len(printable("x" * 10_000)) == 800  # the default: the router's preview


def test_a_dead_letter_makes_every_text_field_printable_and_bounded():
    letter = DeadLetter(at_time(T0), "k\x00ey\ud800", "\u00e6" * 5000, "why\n" * 1000)
    assert letter.key == "k\\x00ey\\xed\\xa0\\x80"
    assert letter.value == "\\xc3\\xa6" * 800
    assert letter.reason == ("why\\x0a" * 200)
    for text in (letter.key, letter.value, letter.reason):
        assert all(" " <= c <= "~" for c in text)
    assert letter.at == at_time(T0)


def test_a_dead_letter_of_printable_text_is_unchanged():
    letter = DeadLetter(at_time(0), "channel:9:timestamp", "12", "meter 9 is not configured")
    assert (letter.key, letter.value, letter.reason) == (
        "channel:9:timestamp",
        "12",
        "meter 9 is not configured",
    )


# --- the small properties -----------------------------------------------------------------------


def test_a_runs_latest_row_is_its_moving_row_once_it_has_one():
    assert Run(1000, first_row=5).latest_row == 5
    assert Run(1000, first_row=5, moving_row=9).latest_row == 9
    assert Run(None, first_row=5, moving_row=5).latest_row == 5


def test_a_records_latest_row_is_its_runs():
    assert MeterRecord(MeterState(), None).latest_row is None
    assert MeterRecord(MeterState(3, 100, 10, T0), Run(500, 4, 8, T0)).latest_row == 8
    assert MeterRecord(MeterState(1, 100, -1, T0), Run(None, 4)).latest_row == 4


def snapshot(counted: int, ppk: int, reading: str = "0") -> MeterSnapshot:
    return MeterSnapshot(1, "m", ppk, 17250, Decimal(reading), counted, None, None)


@pytest.mark.parametrize(
    ("counted", "ppk", "kwh"),
    [
        (0, 1000, "0"),
        (1, 1000, "0.001"),
        (1234567, 1000, "1234.567"),
        (3, 800, "0.00375"),
        (1, 2000, "0.0005"),
        (10**15 + 1, 1000, "1000000000000.001"),  # beyond a float's 15-16 digits
    ],
)
def test_counted_kwh_is_exact(counted: int, ppk: int, kwh: str):
    got = snapshot(counted, ppk).counted_kwh
    assert isinstance(got, Decimal)
    assert got == Decimal(kwh)


def test_counted_kwh_ignores_a_typed_in_reading():
    assert snapshot(500, 1000, reading="12345.6").counted_kwh == Decimal("0.5")
