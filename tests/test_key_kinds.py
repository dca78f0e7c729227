"""Every kind of key is in every place docs/ADDING_A_KEY_KIND.md names, in the place's own
form: a row of each table, an entry of the rules the route script is given."""

from __future__ import annotations

from typing import cast

import pytest

from energy_worker.core import keys, ledger
from energy_worker.core.keys import CHANNEL_KINDS, FLAG_NAMES, LEFT_ALONE, ROUTED, Kind
from helpers import REPO
from key_cases import CASES

ITEM_ONLY = {Kind.REJECTED}  # item kinds no key name has
HANDLED_BY_PUSHER = {Kind.PUSH}
NAMES = {kind: name.decode() for name, kind in {**FLAG_NAMES, **CHANNEL_KINDS}.items()}


def key_of(kind: Kind) -> str:
    """The key's name as the documents' tables spell it."""
    return f"channel:<n>:{NAMES[kind]}" if kind in CHANNEL_KINDS.values() else NAMES[kind]


def test_every_kind_is_routed_left_alone_illegal_or_an_item_only():
    for kind in Kind:
        assert (kind in ROUTED) + (kind in LEFT_ALONE) + (kind in ITEM_ONLY) + (
            kind is Kind.ILLEGAL
        ) == 1, kind


@pytest.mark.parametrize("kind", [*ROUTED, *ITEM_ONLY], ids=lambda k: k.name)
def test_a_routed_kind_is_in_the_script_handled_and_documented(kind: Kind):
    assert keys.rules()["kinds"] == {k.name: k.value for k in Kind}, "the script's kinds"
    assert kind in ledger.HANDLERS or kind in HANDLED_BY_PUSHER, "something handles it"
    contract = (REPO / "docs" / "CONTRACT.md").read_text()
    # its row in the kinds table, with the key it comes from
    row = f"| `{kind.value}` | `{key_of(kind)}` |" if kind in ROUTED else f"| `{kind.value}` |"
    assert row in contract, "docs/CONTRACT.md's kinds table"


@pytest.mark.parametrize("kind", ROUTED, ids=lambda k: k.name)
def test_a_key_kind_has_its_name_and_cases_in_both_readings(kind: Kind):
    name = NAMES[kind]
    # the rules the route script is given map the name to this kind
    rules = keys.rules()
    names = {**cast(dict[str, str], rules["flags"]), **cast(dict[str, str], rules["channels"])}
    assert names[name] == kind.value
    assert any(outcome.kind is kind and outcome.action == "routed" for _, _, outcome in CASES)
    # a row of its own in each input table (a mere mention of the word is no documentation)
    for document in ("docs/DOMAIN.md", "docs/DESIGN.md"):
        assert f"| `{key_of(kind)}` |" in (REPO / document).read_text(), document
