"""What hostile input costs the router: a flood of junk keys, and one huge key name.

    .venv/bin/python bench/hostile.py                   # 1,000,000 junk keys, a 10 MB name
    .venv/bin/python bench/hostile.py --junk 200000 --name-mb 5

A private redis-server with the options of docker-compose.yaml's `redis-db` (bench/servers.py),
and the router process as supervisord runs it (`python -m energy_worker.programs.router`,
optimized),
nothing else: the router alone is what is measured.

1. Flood: the junk keys and one pulse are written before the router starts (as if they came
   while it was down). Measured: when the pulse was taken (from the router's start), when the
   last junk key was gone, the router's peak resident memory (VmHWM) and its log lines.
2. Huge name: with the router running and warm, one SET of a name of --name-mb MB of control
   bytes. Measured: the growth of its peak resident memory until the name is rejected.

Everything started is stopped at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import REPO, PrivateRedis, compose_redis_options, wait_until

OWN_KEYS = 6  # the router's own keys at most: work, deadletter, rejected, seq, epoch, push


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1]) / 1024


def fill(rs: PrivateRedis, junk: int) -> None:
    client = rs.client()
    pipe = client.pipeline(transaction=False)
    for n in range(junk):
        pipe.set(f"junk:{n}", "x")
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    client.set("channel:1:timestamp", "1000")


def router(rs: PrivateRedis, folder: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(rs.port),
        "REDIS_DB": "0",
        "METERS_CONFIG": str(REPO / "services" / "energy_worker" / "meters.toml"),
        "PYTHONPATH": str(REPO / "services"),
        "PYTHONOPTIMIZE": "2",
        "PYTHONUNBUFFERED": "1",
    }
    with (folder / "router.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "energy_worker.programs.router"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--junk", type=int, default=1_000_000, help="junk keys in the flood")
    parser.add_argument("--name-mb", type=float, default=10, help="the huge name's size, MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ew-hostile-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        rs = PrivateRedis(folder, compose_redis_options(), extra_events="")
        rs.start()
        stack.callback(rs.stop)
        client = rs.client()
        fill(rs, args.junk)
        started = time.monotonic()
        proc = router(rs, folder)
        stack.callback(proc.wait)
        stack.callback(proc.kill)
        wait_until(lambda: not client.exists("channel:1:timestamp"), 600, "the pulse to be taken")
        pulse_s = time.monotonic() - started
        wait_until(lambda: client.dbsize() <= OWN_KEYS, 3600, "the junk to be removed")
        junk_s = time.monotonic() - started
        flood_peak = peak_rss_mib(proc.pid)
        lines = len((folder / "router.log").read_bytes().splitlines())
        print(f"flood of {args.junk:,} junk keys and one pulse, written while the router was down:")
        print(f"  pulse taken after       {pulse_s:8.2f} s from the router's start")
        print(f"  junk all removed after  {junk_s:8.1f} s")
        print(f"  router peak RSS         {flood_peak:8.1f} MiB")
        print(f"  router log lines        {lines:8d}")

        size = int(args.name_mb * 1_000_000)
        rejected = int(client.get("energy-worker:rejected") or 0)
        before = peak_rss_mib(proc.pid)
        client.set(b"channel:1:" + b"\x01" * (size - 10), "1")
        wait_until(
            lambda: int(client.get("energy-worker:rejected") or 0) > rejected,
            60,
            "the name's rejection",
        )
        growth = peak_rss_mib(proc.pid) - before
        print(f"a name of {args.name_mb:g} MB of control bytes, rejected by its length:")
        print(f"  router peak RSS growth  {growth:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
