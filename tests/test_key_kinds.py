"""Every kind of key is in every place docs/ADDING_A_KEY_KIND.md names."""

from __future__ import annotations

import pytest

from energy_worker import ledger, queue
from energy_worker.keys import CHANNEL_KINDS, FLAG_NAMES, LEFT_ALONE, ROUTED, Kind
from helpers import REPO
from key_cases import CASES

ITEM_ONLY = {Kind.REJECTED}  # item kinds no key name has
HANDLED_BY_PUSHER = {Kind.PUSH}
NAMES = {kind: name.decode() for name, kind in {**FLAG_NAMES, **CHANNEL_KINDS}.items()}


def test_every_kind_is_routed_left_alone_illegal_or_an_item_only():
    for kind in Kind:
        assert (kind in ROUTED) + (kind in LEFT_ALONE) + (kind in ITEM_ONLY) + (
            kind is Kind.ILLEGAL
        ) == 1, kind


@pytest.mark.parametrize("kind", [*ROUTED, *ITEM_ONLY], ids=lambda k: k.name)
def test_a_routed_kind_is_in_the_script_handled_and_documented(kind: Kind):
    assert f"'{kind.value}'" in queue._ROUTE, "the route script writes it"
    assert kind in ledger.HANDLERS or kind in HANDLED_BY_PUSHER, "something handles it"
    contract = (REPO / "docs" / "CONTRACT.md").read_text()
    assert f"| `{kind.value}` |" in contract, "docs/CONTRACT.md's kinds table"


@pytest.mark.parametrize("kind", ROUTED, ids=lambda k: k.name)
def test_a_key_kind_has_its_name_and_cases_in_both_readings(kind: Kind):
    name = NAMES[kind]
    assert f"{name} = " in queue._ROUTE, "the route script's name table"
    assert any(outcome.kind is kind and outcome.action == "routed" for _, _, outcome in CASES)
    for document in ("docs/DOMAIN.md", "README.md"):
        assert name in (REPO / document).read_text().lower(), document
