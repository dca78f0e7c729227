"""A power cut of the Pi, emulated: Redis, with the persistence docker-compose.yaml ships
(append-only file synced every second), loses the unsynced tail of its file, and every program
dies at once. What it may cost is stated in docs/CONTRACT.md ("Durability"): the pulses of the
last two seconds, never one counted twice.

Redis runs with bench/fsync_delay.c preloaded, which logs the file's size at each sync; the cut
is a SIGKILL of everything, then the file cut back to its last synced size."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from conftest import RedisServer

from helpers import REPO, wait_until

METERS = (1, 2, 3)
RATE = 10.0  # pulses per second per meter
BOUND_S = 2.0  # what docs/CONTRACT.md promises a power cut costs at most, in seconds of pulses
pytestmark = pytest.mark.processes


def compose_redis_options() -> list[str]:
    """The persistence options of docker-compose.yaml's redis-db (what ships)."""
    command = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]["redis-db"][
        "command"
    ]
    options = []
    for flag in ("--appendonly", "--appendfsync"):
        options += [flag, str(command[command.index(flag) + 1])]
    return options


class SyncedRedis(RedisServer):
    """redis-server with the options that ship and its syncs logged (the size of the
    append-only file at each)."""

    def __init__(self, folder: Path) -> None:
        compiler = shutil.which("cc") or shutil.which("gcc")
        assert compiler, "the power-cut test compiles bench/fsync_delay.c: it needs a C compiler"
        library = folder / "libfsync_delay.so"
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(library),
             str(REPO / "bench" / "fsync_delay.c"), "-ldl"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.folder = folder
        self.size_log = folder / "synced-sizes.log"
        counts = folder / "syncs.counts"
        counts.write_bytes(bytes(8 * 8))
        env = {
            "LD_PRELOAD": str(library),
            "FSYNC_DELAY_MS": "0",
            "FSYNC_COUNT_FILE": str(counts),
            "FSYNC_SIZE_LOG": str(self.size_log),
        }
        super().__init__(folder, *compose_redis_options(), env=env, log=folder / "redis.log")

    def power_cut(self, worst: set[tuple[bytes, bytes]] | None = None) -> int:
        """SIGKILL, then the append-only file cut back to its last synced size; returns the
        bytes lost. worst: the (key, value) writes of the webhook a sync may have followed
        last; the file is cut after the latest of them that the router then moved, between
        the write and the move (the moment a sync hurts most)."""
        assert self.proc is not None
        self.stop()  # SIGKILL
        synced: dict[str, int] = {}
        for line in self.size_log.read_text().splitlines():
            name, synced_size = line.rsplit(" ", 1)
            synced[name] = int(synced_size)
        lost = 0
        for path in (self.folder / "appendonlydir").glob("*.incr.aof"):
            size = path.stat().st_size
            keep = worst_cut(path.read_bytes(), worst) if worst else synced.get(str(path), 0)
            if size > keep:
                lost += size - keep
                with path.open("r+b") as f:
                    f.truncate(keep)
        return lost


def commands(aof: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """The commands of an append-only file (RESP arrays), each with the offset after it."""
    at = 0
    while at < len(aof) and aof[at : at + 1] == b"*":
        end = aof.index(b"\r\n", at)
        count, at = int(aof[at + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = aof.index(b"\r\n", at)
            length = int(aof[at + 1 : end])
            args.append(aof[end + 2 : end + 2 + length])
            at = end + 2 + length + 2
        yield at, args


def worst_cut(aof: bytes, writes: set[tuple[bytes, bytes]]) -> int:
    """The offset right after the last of `writes` (webhook SETs) whose key was then moved."""
    pending: dict[bytes, int] = {}
    cut = 0
    for offset, args in commands(aof):
        name = args[0].upper()
        if name == b"SET" and (args[1], args[2]) in writes:
            pending[args[1]] = offset
        elif name == b"DEL" and args[1] in pending:
            cut = max(cut, pending.pop(args[1]))
    assert cut, "no such key was written and then moved"
    return cut


@pytest.fixture
def synced_redis(tmp_path: Path) -> Iterator[SyncedRedis]:
    server = SyncedRedis(tmp_path)
    yield server
    server.stop()


@pytest.mark.parametrize("moment", ["synced", "worst"])
def test_a_power_cut_costs_at_most_two_seconds_of_pulses_and_counts_none_twice(
    synced_redis: SyncedRedis, spawn, sql, moment: str
):
    """synced: Redis keeps what it last synced. worst: its last sync came more than a second
    before the cut (everysec can be that late), just after the webhook wrote a key and before
    the router moved it. A processor that had committed that pulse and the meter's next ones
    would count it again when its key comes back; this one commits only what Redis has had on
    disk for 2 s, as everysec promises."""
    assert compose_redis_options() == ["--appendonly", "yes", "--appendfsync", "everysec"]
    port = str(synced_redis.port)
    client = redis.Redis(port=synced_redis.port)
    programs = [
        spawn("router", REDIS_PORT=port, REDIS_DB="0"),
        spawn("processor", REDIS_PORT=port, REDIS_DB="0", COMMIT_INTERVAL="0.5"),
    ]
    programs[0].wait_for_log("listening")
    programs[1].wait_for_log("items are committed once 2 s old")
    # The Arduinos: each meter's pulses at RATE, SET only if absent, retried while it exists.
    sent: list[tuple[float, int, int]] = []  # (when the webhook answered, meter, millis)
    millis = dict.fromkeys(METERS, 1000)
    start = time.monotonic()
    next_at = dict.fromkeys(METERS, start)
    while time.monotonic() < start + 3.0:
        for meter in METERS:
            if time.monotonic() >= next_at[meter] and client.set(
                f"channel:{meter}:timestamp", millis[meter], nx=True
            ):
                sent.append((time.monotonic(), meter, millis[meter]))
                millis[meter] += int(1000 / RATE)
                next_at[meter] += 1 / RATE
    cut_at = time.monotonic()
    for program in programs:
        program.kill(signal.SIGKILL)
    worst = {
        (f"channel:{m}:timestamp".encode(), str(v).encode())
        for t, m, v in sent
        if cut_at - 1.5 <= t <= cut_at - 1.0
    }
    lost_bytes = synced_redis.power_cut(worst if moment == "worst" else None)
    # (the last sync may have come just before the cut: then the synced case loses nothing)
    assert lost_bytes > 0 or moment == "synced", "the cut took nothing: it would prove nothing"

    # The power is back: everything starts again as the container does, the set-up first (it
    # gives Redis a new epoch when its sequence number fell behind what is committed).
    synced_redis.start()
    setup = spawn("setup", REDIS_PORT=port, REDIS_DB="0")
    assert setup.wait_exit(60) == 0, setup.log()
    spawn("router", REDIS_PORT=port, REDIS_DB="0")
    spawn("processor", REDIS_PORT=port, REDIS_DB="0", COMMIT_INTERVAL="0.5")
    # The Arduinos carry on: one more pulse each, so a counter that went back would show.
    for meter in METERS:
        key, value = f"channel:{meter}:timestamp", millis[meter]

        def accepted(k: str = key, v: int = value) -> bool:
            return bool(client.set(k, v, nx=True))

        wait_until(accepted, 10)
        sent.append((time.monotonic(), meter, millis[meter]))

    def settled() -> bool:
        return (
            not client.keys("channel:*")
            and client.llen("energy-worker:work") + client.llen("energy-worker:processing") == 0
            and [row[0] for row in sql.run(
                "SELECT pulse_time_stamp FROM meter_status WHERE meter_no = ANY(:m) "
                "ORDER BY meter_no", m=list(METERS)
            )] == [millis[m] for m in METERS]
        )  # fmt: skip

    wait_until(settled, 30, what="the pipeline to settle after the cut")
    counted = dict(
        sql.run(
            "SELECT meter_no, pulses_counted FROM meter_status WHERE meter_no = ANY(:m)",
            m=list(METERS),
        )
    )
    for meter in METERS:
        delivered = [t for t, m, _ in sent if m == meter]
        recent = [t for t in delivered if cut_at - BOUND_S <= t <= cut_at]
        lost = len(delivered) - counted[meter]
        assert 0 <= lost <= len(recent), (meter, len(delivered), counted[meter], len(recent))
        # A pulse counted twice after the cut would come as an old millis after newer ones: a
        # power-less restart of the meter's history (pulse_period -1 after its first row).
        ((restarts,),) = sql.run(
            "SELECT count(*) FROM consumption WHERE meter_no = :m AND pulse_period = -1 "
            "AND NOT typed_in",
            m=meter,
        )
        assert restarts == 1, meter
    for program in programs:
        assert "only a reboot explains" not in program.log()
