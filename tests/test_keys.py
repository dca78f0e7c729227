"""The input contract, the Python side: keys.classify and keys.value_problem against the one
table of cases (key_cases.py) that the router's Lua script is held to as well
(test_work_queue.py)."""

from __future__ import annotations

import pytest
from hypothesis import given

from energy_worker.core.keys import Kind, classify, value_problem
from key_cases import CASES, METERS, key_names, python_outcome, values


@pytest.mark.parametrize(("key", "value", "outcome"), CASES, ids=range(len(CASES)))
def test_the_table_of_cases(key: bytes, value: bytes, outcome):
    assert python_outcome(key, value) == outcome


def test_str_names_are_read_as_their_utf8_bytes():
    assert classify("channel:7:timeſtamp", METERS).kind is Kind.ILLEGAL
    assert classify("Chanel:7:Timestamp", METERS).kind is Kind.TIMESTAMP
    assert value_problem(Kind.TIMESTAMP, "١٢") == "value is not a whole number"


@given(key_names, values)
def test_never_fails_and_a_contract_kind_needs_the_contract_spelling(key: bytes, value: bytes):
    found = classify(key, METERS)
    assert found.kind in Kind
    if found.kind in (Kind.TIMESTAMP, Kind.METERCOUNT):
        assert key.isascii()
        word = key.lower().split(b":")
        assert word[0] in (b"channel", b"chanel") and word[2] in (b"timestamp", b"metercount")
        assert word[1] == str(found.meter).encode()
    problem = value_problem(found.kind, value)
    assert problem is None or isinstance(problem, str)
