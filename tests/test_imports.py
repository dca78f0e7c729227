"""Each program imports what it uses and no more: on a Pi every Python process pays in memory
for each module it loads (a few MiB for asyncio, pg8000's chain, or a client library)."""

import json
import subprocess
import sys

import pytest

from helpers import REPO

ONLY_WITH_A_DATABASE = ("pg8000", "scramp", "asn1crypto", "dateutil")
ONLY_WITH_A_WEBHOOK = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")
ONLY_THE_PUBLISHER = ("paho",)

CASES = [
    (
        "energy_worker.programs.router",
        ONLY_WITH_A_DATABASE + ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER,
    ),
    ("energy_worker.programs.processor", ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER),
    # the pusher imports requests only when a webhook URL is set (webhook.Webhook)
    ("energy_worker.programs.pusher", ONLY_WITH_A_WEBHOOK + ONLY_THE_PUBLISHER),
    ("energy_worker.runtime.exit_listener", ("redis", *ONLY_WITH_A_DATABASE, *ONLY_WITH_A_WEBHOOK)),
]


@pytest.mark.parametrize(("module", "unwanted"), CASES)
def test_a_program_loads_no_library_it_does_not_use(module, unwanted):
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "services")},
    )
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(unwanted), sorted(loaded & set(unwanted))
