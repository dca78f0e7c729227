"""Log lines: foreign input shown safely, and no secret from a library's warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import pytest

from energy_worker.adapters import logs
from helpers import REPO

SCRIPT = """
import socket, sys, threading
from energy_worker.adapters import logs
from energy_worker.programs.pusher.sheet_client import SheetClient
logs.setup("pusher")
server = socket.create_server(("127.0.0.1", 0))
def answer():
    conn, _ = server.accept()
    conn.recv(65536)
    # a header line urllib3 cannot parse: it warns, with the whole URL
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nX-Foo: a\\r\\n b\\r\\n"
                 b"broken header line\\r\\n\\r\\nok")
    conn.close()
threading.Thread(target=answer, daemon=True).start()
url = f"http://127.0.0.1:{server.getsockname()[1]}/macros/s/SECRETID/exec?token=s3cret"
print("answer", SheetClient(url, 3).send("1.00"))
"""


@pytest.mark.processes
def test_a_library_warning_never_shows_the_sheet_url():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "services"), "PATH": ""},
        timeout=30,
        check=True,
    )
    assert "answer" in done.stdout
    assert "s3cret" not in done.stderr and "SECRETID" not in done.stderr, done.stderr


def test_foreign_input_is_printable_quoted_and_truncated():
    assert logs.quoted(b"bad\xffname") == "'bad\\xffname'"
    assert logs.quoted("line\nbreak") == "'line\\nbreak'"
    assert logs.quoted("måler") == "'måler'"
    long = logs.quoted("9" * 500)
    assert long.startswith("'" + "9" * 80) and "(500 chars in all)" in long


def test_a_huge_input_is_cut_before_it_is_decoded():
    """A 10 MB name of control bytes: only its head is decoded and escaped (it used to: the whole
    of it cost the router hundreds of MiB)."""
    huge = b"\x01" * 10_000_000
    tracemalloc.start()
    try:
        shown = logs.quoted(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown == "'" + "\\x01" * 20 + "...(10000000 bytes in all)'"
    assert peak < 64 * 1024


@pytest.mark.processes
@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_logged_with_the_process_name(where: str):
    raiser = "raise RuntimeError('boom')"
    if where == "thread":
        raiser = "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()"
    result = subprocess.run(
        [sys.executable, "-c", f"import threading\n"
         f"from energy_worker.adapters import logs\nlogs.setup('router')\n{raiser}"],
        env={**os.environ, "PYTHONPATH": str(REPO / "services")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    assert lines and all(" router CRITICAL " in line for line in lines), result.stderr
    assert ("RuntimeError: boom" if where == "main" else "ZeroDivisionError") in result.stderr
    assert result.returncode == (1 if where == "main" else 0)
