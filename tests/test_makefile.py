"""The Makefile's promises: a first install says what it does, `make clean` leaves nothing of a
build or a run behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def tracked_copy(dest: Path) -> set[str]:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    tracked = {f for f in files if f and (REPO / f).is_file()}
    for name in tracked:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return tracked


def test_make_clean_leaves_only_the_repository(tmp_path: Path):
    tracked = tracked_copy(tmp_path)
    # what `make run`, `make test` and the editable install leave
    # what `make run`, `make test` and the editable install leave (parts: no path to check)
    for parts in (
        (".venv", "bin", "python"),
        ("var", "postgres", "PG_VERSION"),
        ("var", "make-run.json"),
        ("services", "energy_worker.egg-info", "PKG-INFO"),
        ("services", "energy_worker", "__pycache__", "config.cpython-311.opt-2.pyc"),
        ("services", "energy_worker", "cli", "__pycache__", "status.cpython-311.pyc"),
        ("tests", "__pycache__", "helpers.cpython-311.pyc"),
        (".pytest_cache", "README.md"),
        (".mypy_cache", "3.11", "x.json"),
        (".ruff_cache", "x"),
        (".hypothesis", "examples", "x"),
    ):
        made = tmp_path.joinpath(*parts)
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text("x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == tracked


def test_a_first_install_shows_pip_at_work(tmp_path: Path):
    plan = subprocess.run(
        ["make", "-n", f"VENV={tmp_path}/venv", "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert installs and not any("--quiet" in line or " -q" in line for line in installs)
    assert "installing what the service needs" in plan


def test_make_status_shows_needs_attention_without_makes_noise(tmp_path: Path):
    """The command's own exit status stands for itself: make adds no error of its own for 1."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    command = venv / "bin" / "energy-worker"  # stands in for the command: only make is tested
    command.write_text('#!/bin/sh\necho "report"\nexit "$CODE"\n')
    command.chmod(0o755)
    (venv / ".run-installed").touch()
    for code, make_status in (("0", 0), ("1", 0), ("2", 2)):
        done = subprocess.run(
            ["make", "-s", f"VENV={venv}", "status"],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "CODE": code},
            check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (make_status, "report\n"), done
        if code != "2":
            assert done.stderr == ""
