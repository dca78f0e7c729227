"""Running the `energy-worker` command in the tests: in-process (main(), the same code the
console script runs, against real servers; milliseconds instead of an interpreter start), or
as the installed console script itself."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from energy_worker.cli import main

SCRIPT = Path(sys.executable).parent / "energy-worker"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli(env: dict[str, str], *args: str, stdin: str = "") -> Result:
    """main(args) with this environment, stdin and captured output."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args), env)
            except SystemExit as exc:  # argparse: --help, a wrong argument
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = saved
    return Result(code, out.getvalue(), err.getvalue())


def cli_process(env: dict[str, str], *args: str, stdin: str = "") -> Result:
    """The installed console script, .venv/bin/energy-worker."""
    done = subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)
