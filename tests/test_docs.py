"""The repository explains itself: every path it names exists in it, and it names no issue of a
tracker it does not contain."""

from __future__ import annotations

import re
import subprocess

import pytest

from energy_worker.adapters import schema
from helpers import REPO

FOLDERS = (
    "docs",
    "services",
    "tests",
    "bench",
    "etc",
    "grafana",
    "devtools",
    "mosquitto",
    "redis-db",
)
PATH = re.compile(
    r"(?<![\w/.-])((?:" + "|".join(FOLDERS) + r")/[\w./-]*\w)"  # a path inside the repository
)
# (spelt so that this file does not match itself)
ISSUE = re.compile(r"\bissues? #?\d+|\(" + "issue" + r"\b", re.IGNORECASE)
GENERATED = ("var/", ".venv/")
HISTORY = "tests/schema_history/"  # the schema as earlier versions shipped it: the paths of then
# Named, and not files of the repository: the owner makes the broker's password file (git-ignored),
# and grafana/grafana-oss is an image's name.
NOT_FILES = {"mosquitto/passwd", "grafana/grafana-oss"}


def tracked_texts() -> list[str]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        n
        for n in names
        if not n.endswith((".png", ".so")) and not n.startswith((*GENERATED, HISTORY))
    ]


@pytest.mark.parametrize("name", tracked_texts())
def test_every_path_named_exists_and_no_issue_is_cited(name: str):
    text = (REPO / name).read_text(errors="replace")
    assert not ISSUE.search(text), ISSUE.search(text)
    missing = [
        path
        for match in PATH.finditer(text)
        if not (REPO / (path := match.group(1).rstrip("."))).exists()
        and not any(c in path for c in "*<{")
        and path not in NOT_FILES
    ]
    assert not missing, missing


def test_the_log_lines_the_guide_quotes_are_the_ones_the_code_writes():
    guide = (REPO / "docs" / "GUIDE.md").read_text()
    current = schema.latest()
    quoted = re.findall(r"ready: schema version (\d+)", guide)
    assert quoted and set(quoted) == {str(current)}
    setup = (REPO / "services" / "energy_worker" / "programs" / "set_up.py").read_text()
    assert '"PostgreSQL %s ready: schema version %s, meters %s"' in setup
    listener = (REPO / "services" / "energy_worker" / "runtime" / "exit_listener.py").read_text()
    assert "exit_listener INFO ready: router, processor, pusher running" in guide
    assert '"ready: %s running"' in listener
