"""The suite shares the machine: two runs at once, each started with SIGINT ignored (as under
nohup and some CI runners), both pass and leave nothing behind.

The runs take the tests that once broke that: the router's, which switch keyspace
notifications on and off (a server-wide setting: harmless only on a Redis the run started
itself), and those that stop a process with SIGINT (which an ignored SIGINT would not stop).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.processes

SELECTION = [
    "tests/test_router.py",
    "tests/test_entrypoint.py::test_a_signal_is_passed_on_and_ends_non_zero",
    # the router's tests that change no server-wide setting and stop no process with SIGINT:
    # the sweep's memory bound, the huge name's, the partition's (a proxy of the test's own), and
    # the router killed at any instant (SIGKILL, 4 s of CPU a run); 20 s of each run
    *(
        f"--deselect=tests/test_router.py::{name}"
        for name in (
            "test_a_sweep_routes_legal_keys_first_step_by_step_in_bounded_memory",
            "test_a_huge_name_is_rejected_by_its_length_and_costs_the_router_nothing",
            "test_after_a_silent_partition_of_a_quiet_router_it_is_back_on_notifications_in_10_s",
            "test_router_killed_at_any_instant_loses_no_pulse_and_duplicates_none",
        )
    ),
]


def test_two_runs_at_once_with_sigint_ignored_both_pass_and_leave_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    runs = []
    for n in range(2):
        log = (tmp_path / f"run{n}.log").open("wb")
        command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]
        runs.append(
            (
                subprocess.Popen(
                    ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command, *SELECTION],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    # a run fails when a process of its own outlives it (its session fixture kills and names it)
    for n, (proc, log) in enumerate(runs):
        status = proc.wait(240)
        log.close()
        assert status == 0, (tmp_path / f"run{n}.log").read_text()
