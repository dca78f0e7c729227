"""The input contract: key names and values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energy_worker.keys import Kind, classify, value_problem

METERS = frozenset(range(1, 8))


@pytest.mark.parametrize(
    ("key", "kind", "meter"),
    [
        ("channel:1:timestamp", Kind.TIMESTAMP, 1),
        ("Chanel:7:Timestamp", Kind.TIMESTAMP, 7),
        ("CHANNEL:3:METERCOUNT", Kind.METERCOUNT, 3),
        ("powerup", Kind.POWERUP, None),
        ("STOP", Kind.STOP, None),
        ("pushToGoogle", Kind.PUSH, None),
        ("debug", Kind.DEBUG, None),
        ("foo", Kind.FOO, None),
        ("energy-worker:work", Kind.OWN, None),
    ],
)
def test_legal_keys(key, kind, meter):
    found = classify(key, METERS)
    assert (found.kind, found.meter) == (kind, meter)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("channel:9:timestamp", "meter 9 is not configured"),
        ("channel:1:timestamps", "unknown key"),
        ("channel::timestamp", "unknown key"),
        ("hello", "unknown key"),
        ("channel:1:timestamp ", "unknown key"),
        ("channel:٣:timestamp", "unknown key"),  # a digit, but not an ASCII one
    ],
)
def test_illegal_keys(key, reason):
    found = classify(key, METERS)
    assert found.kind is Kind.ILLEGAL
    assert found.reason == reason


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        (Kind.TIMESTAMP, "0", True),
        (Kind.TIMESTAMP, "4294967295", True),
        (Kind.TIMESTAMP, "4294967296", False),
        (Kind.TIMESTAMP, "-1", False),
        (Kind.TIMESTAMP, "12.5", False),
        (Kind.TIMESTAMP, "", False),
        (Kind.TIMESTAMP, "١٢", False),  # digits, but not ASCII ones
        (Kind.METERCOUNT, "9999999", True),
        (Kind.METERCOUNT, "10000000", False),
        (Kind.STOP, "TRUE", True),
        (Kind.STOP, "false", False),
        (Kind.DEBUG, "false", True),
        (Kind.DEBUG, "maybe", False),
    ],
)
def test_values(kind, value, ok):
    assert (value_problem(kind, value) is None) is ok


@given(st.text(max_size=40))
def test_classify_never_fails(key):
    assert classify(key, METERS).kind in Kind
