"""Benchmark of the pulse path, driven through the webhook's protocol.

Starts the real router and processor (and the pusher, when there is one) against a fresh
PostgreSQL database and a claimed Redis database, then measures:
  1. load: N meters, each an Arduino with a 5-slot buffer, sending every pulse with SET NX and
     retrying while the meter's key still exists ("102 Processing"); a pulse that meets a
     full buffer is lost. Reports pulses lost, key-clear latency p50/p99 (from the SET to the
     key's deletion, heard as a keyspace event), and checks PostgreSQL counted each delivered
     pulse exactly once;
  2. backlog: with the processor stopped, 100,000 pulses are put on the work list as the router
     puts them; then the processor is started and timed until it has committed them all;
  3. outage: the load again, with PostgreSQL cut off (a TCP proxy between the processes and
     the server drops every connection) for the middle half of the run, as in DOMAIN.md's
     measurement of the original (20 s of 40 s at 2 pulses/s per meter);
  4. idle: CPU of all processes over a quiet stretch, and their memory.

    .venv/bin/python bench/bench.py [--rates 2,5,10,20,50] [--duration 30] [--backlog 100000]

Uses the PostgreSQL at 127.0.0.1:5432 and the Redis at 127.0.0.1:6379 (override with the
EW_TEST_* variables of tests/conftest.py); touches only its own database and Redis database.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
import redis.asyncio as aredis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "services"))
sys.path.insert(0, str(REPO / "tests"))  # for the tests' TCP proxy

from energy_worker import config, db, queue, schema  # noqa: E402
from energy_worker.keys import Kind  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402

ARDUINO_SLOTS = 5
RETRY_S = 0.010  # how soon the Arduino tries again after "102 Processing"
# The original's figures on this kind of machine, from DOMAIN.md: rate -> (lost %, p50, p99 ms)
ORIGINAL = {2: (0, 193, 425), 5: (34, 366, 451), 10: (69, 395, 491)}


@dataclass
class MeterLoad:
    number: int
    generated: int = 0
    lost: int = 0
    delivered: int = 0
    buffer: collections.deque[int] = field(default_factory=collections.deque)


@dataclass
class LoadResult:
    rate: float
    meters: int
    duration: float
    generated: int
    lost: int
    delivered: int
    counted: int
    latencies_ms: list[float]

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class Stack:
    """Our processes on a fresh database and Redis keyspace."""

    def __init__(self) -> None:
        host = os.environ.get("EW_TEST_PG_HOST", "127.0.0.1")
        port = int(os.environ.get("EW_TEST_PG_PORT", "5432"))
        user = os.environ.get("EW_TEST_PG_USER", "postgres")
        self.admin_settings = config.PostgresSettings(host, port, "postgres", user, "")
        self.dbname = f"ew_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = db.connect(self.admin_settings, "energy-worker bench")
        admin.run(f'CREATE DATABASE "{self.dbname}"')
        admin.close()
        self.pg = config.PostgresSettings(host, port, self.dbname, user, "")
        con = db.connect(self.pg, "energy-worker bench")
        self.meters = config.load_meters(REPO / "etc" / "meters.toml")
        schema.apply(con, self.meters)
        self.sql = con
        rhost = os.environ.get("EW_TEST_REDIS_HOST", "127.0.0.1")
        rport = int(os.environ.get("EW_TEST_REDIS_PORT", "6379"))
        for number in range(15, 0, -1):
            r = redis.Redis(host=rhost, port=rport, db=number)
            if r.dbsize() == 0 and r.set("energy-worker:bench-claim", "1", nx=True, ex=3600):
                break
        else:
            raise SystemExit("no empty Redis database to benchmark in")
        self.r = r
        self.redis = config.RedisSettings(rhost, rport, number, None)
        flags = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
        r.config_set("notify-keyspace-events", "".join(set(flags) | set("KEg$")))
        self.tmp = Path(tempfile.mkdtemp(prefix="ew-bench-"))
        # The processes reach PostgreSQL through a proxy the outage phase can cut; the backlog
        # phase measures the processor alone, connected directly.
        self.proxy = TcpProxy(host, port)
        ini = self.tmp / "postgres.ini"
        ini.write_text(
            f"[postgresql]\nhost = 127.0.0.1\nport = {self.proxy.port}\n"
            f"database = {self.dbname}\nuser = {user}\npassword = \n"
        )
        self.direct_ini = self.tmp / "postgres-direct.ini"
        self.direct_ini.write_text(
            f"[postgresql]\nhost = {host}\nport = {port}\n"
            f"database = {self.dbname}\nuser = {user}\npassword = \n"
        )
        self.env = {
            **os.environ,
            "POSTGRES_INI": str(ini),
            "REDIS_HOST": rhost,
            "REDIS_PORT": str(rport),
            "REDIS_DB": str(number),
            "METERS_CONFIG": str(REPO / "etc" / "meters.toml"),
            "PYTHONPATH": str(REPO / "services"),
            "LOG_LEVEL": "WARNING",
        }
        self.env.pop("GOOGLE_WEBHOOK_URL", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, **env: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"energy_worker.{name}"],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        proc.wait(15)

    def committed(self) -> int:
        return self.sql.run("SELECT last_seq FROM worker_progress")[0][0]

    def counted(self) -> int:
        return int(self.sql.run("SELECT coalesce(sum(pulses_counted), 0) FROM meter_status")[0][0])

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}; logs in {self.tmp}")
            time.sleep(0.02)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.sql.close()
        self.proxy.close()
        self.r.flushdb()
        admin = db.connect(self.admin_settings, "energy-worker bench")
        admin.run(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        admin.close()


async def drive(
    stack: Stack,
    rate: float,
    duration: float,
    meters: int,
    outage: tuple[float, float] | None = None,
) -> LoadResult:
    """Arduinos at `rate` pulses/s per meter for `duration` s, through the webhook protocol;
    with `outage` (from, to) seconds into the run, PostgreSQL is unreachable meanwhile."""
    r = aredis.Redis(host=stack.redis.host, port=stack.redis.port, db=stack.redis.db)
    listener = aredis.Redis(host=stack.redis.host, port=stack.redis.port, db=stack.redis.db)
    pubsub = listener.pubsub()
    await pubsub.subscribe(f"__keyevent@{stack.redis.db}__:del")
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    counted_before = stack.counted()

    async def hear_deletions() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message" and message["data"] in sent_at:
                latencies.append((time.perf_counter() - sent_at.pop(message["data"])) * 1000)

    loads = [MeterLoad(n) for n in range(1, meters + 1)]
    start = time.perf_counter()

    async def arduino(load: MeterLoad) -> None:
        key = f"channel:{load.number}:timestamp".encode()
        interval = 1 / rate
        next_pulse = start + interval * (load.number / meters)  # meters out of phase
        end = start + duration
        while True:
            now = time.perf_counter()
            while next_pulse <= now and next_pulse < end:
                load.generated += 1
                if len(load.buffer) >= ARDUINO_SLOTS:
                    load.lost += 1  # the buffer is full: this pulse is gone for good
                else:
                    load.buffer.append(int((next_pulse - start) * 1000) + 1000)
                next_pulse += interval
            if load.buffer and key not in sent_at:
                # Registered before the SET: the router may delete the key (and its event be
                # heard) before the SET's own answer arrives.
                sent_at[key] = time.perf_counter()
                if await r.set(key, str(load.buffer[0]), nx=True):
                    load.buffer.popleft()
                    load.delivered += 1
                    continue
                sent_at.pop(key, None)  # "102 Processing": the key is still there
            if next_pulse >= end and not load.buffer:
                return
            await asyncio.sleep(min(RETRY_S, max(next_pulse - time.perf_counter(), 0)))

    async def cut_database() -> None:
        assert outage is not None
        await asyncio.sleep(outage[0])  # the scenario's timeline, not synchronisation
        stack.proxy.cut()
        await asyncio.sleep(outage[1] - outage[0])
        stack.proxy.restore()

    hearing = asyncio.create_task(hear_deletions())
    faults = [cut_database()] if outage else []
    await asyncio.gather(*(arduino(load) for load in loads), *faults)
    deadline = time.perf_counter() + 10
    while sent_at and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    hearing.cancel()
    await pubsub.aclose()
    await listener.aclose()
    await r.aclose()
    delivered = sum(load.delivered for load in loads)
    stack.wait_for(lambda: stack.counted() - counted_before >= delivered, 60, "the processor")
    return LoadResult(
        rate,
        meters,
        duration,
        sum(load.generated for load in loads),
        sum(load.lost for load in loads),
        delivered,
        stack.counted() - counted_before,
        latencies,
    )


def backlog_drain(stack: Stack, n: int) -> tuple[float, int]:
    """Seconds the processor takes to commit an n-pulse backlog, and the transactions used.
    The other processes are stopped meanwhile, so the count is the processor's own."""
    others = [name for name in stack.procs if name != "processor"]
    for name in list(stack.procs):
        stack.stop(name)
    queues = queue.Queues(stack.r)
    first = stack.committed()
    wall = int(time.time() * 1000) - (n // 7) * 450 - 60_000  # the backlog ends a minute ago
    for chunk_start in range(0, n, 10_000):
        pipe = stack.r.pipeline(transaction=False)
        for i in range(chunk_start, min(chunk_start + 10_000, n)):
            meter_no = i % 7 + 1
            key = f"channel:{meter_no}:timestamp".encode()
            step = i // 7
            pipe.set(key, str((step * 450 + (step % 13) * 20) % 2**32))
            queues.route_in(pipe, key, Kind.TIMESTAMP, meter_no, now_ms=wall + step * 450)
        pipe.execute()
    target = stack.r.get(queue.SEQ)
    xacts = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    before = stack.sql.run(xacts)[0][0]
    started = time.perf_counter()
    stack.start("processor", POSTGRES_INI=str(stack.direct_ini))
    # Polled in Redis, not PostgreSQL, so the transaction count is the processor's alone:
    # the lists are empty once the last batch is committed and acknowledged.
    stack.wait_for(
        lambda: stack.r.llen(queue.WORK) + stack.r.llen(queue.PROCESSING) == 0,
        600,
        "the backlog to drain",
    )
    elapsed = time.perf_counter() - started
    time.sleep(1.5)  # PostgreSQL publishes its statistics once a second
    stack.sql.run("SELECT pg_stat_clear_snapshot()")
    after = stack.sql.run(xacts)[0][0]
    assert stack.committed() - first == n == int(target) - first
    stack.stop("processor")
    for name in ["processor", *others]:
        stack.start(name)
    return elapsed, after - before


def idle_usage(stack: Stack, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """CPU % (of one core) of all processes together over `seconds` of quiet, and RSS MiB each."""
    procs = {name: psutil.Process(p.pid) for name, p in stack.procs.items()}
    time.sleep(2)  # let start-up and the last batch settle before measuring
    before = {name: sum(p.cpu_times()[:2]) for name, p in procs.items()}
    time.sleep(seconds)
    used = {name: sum(p.cpu_times()[:2]) - before[name] for name, p in procs.items()}
    memory = {name: p.memory_info().rss / 2**20 for name, p in procs.items()}
    return {name: 100 * u / seconds for name, u in used.items()}, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="2,5,10,20,50", help="pulses/s per meter, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=30, help="seconds per load")
    parser.add_argument("--meters", type=int, default=7)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=20, help="seconds of idle measurement")
    parser.add_argument(
        "--outage-duration",
        type=float,
        default=40,
        help="seconds of the run with a PostgreSQL outage in its middle half",
    )
    args = parser.parse_args()

    stack = Stack()
    try:
        for name in ("router", "processor", "pusher"):
            if (REPO / "services" / "energy_worker" / f"{name}.py").exists():
                stack.start(name)
        stack.wait_for(lambda: stack.r.exists(queue.EPOCH) or _route_probe(stack), 30, "the router")
        stack.wait_for(lambda: stack.committed() >= 1, 30, "the processor")

        print(
            f"load: {args.meters} meters through the webhook protocol "
            f"({ARDUINO_SLOTS}-slot buffer, retry every {RETRY_S * 1000:.0f} ms)"
        )
        print(
            f"{'pulses/s/meter':>15} {'seconds':>8} {'pulses':>7} {'lost':>6} {'lost %':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'counted':>8}   original: lost %, p50, p99 ms"
        )
        for rate in (float(x) for x in args.rates.split(",")):
            result = asyncio.run(drive(stack, rate, args.duration, args.meters))
            original = ORIGINAL.get(int(rate))
            reference = (
                f"{original[0]:>3} %, {original[1]} ms, {original[2]} ms"
                if original and rate == int(rate)
                else "-"
            )
            ok = "exact" if result.counted == result.delivered else f"{result.counted} (!)"
            print(
                f"{rate:>15g} {args.duration:>8g} {result.generated:>7} {result.lost:>6} "
                f"{100 * result.lost / max(result.generated, 1):>6.1f}% "
                f"{result.pct(0.50):>7.2f} {result.pct(0.99):>7.2f} {ok:>8}   {reference}"
            )

        third = args.outage_duration / 4
        result = asyncio.run(drive(stack, 2, args.outage_duration, args.meters, (third, 3 * third)))
        ok = "exact" if result.counted == result.delivered else f"{result.counted} (!)"
        print(
            f"\noutage: PostgreSQL unreachable for {2 * third:g} s of a {args.outage_duration:g} s "
            f"run at 2 pulses/s per meter: {result.generated} pulses, {result.lost} lost "
            f"({100 * result.lost / max(result.generated, 1):.1f} %), key-clear p99 "
            f"{result.pct(0.99):.2f} ms, counted {ok}; processes still running: "
            f"{', '.join(n for n, p in stack.procs.items() if p.poll() is None)} "
            "(original: crashed, 86 % of the run's pulses lost)"
        )

        elapsed, xacts = backlog_drain(stack, args.backlog)
        print(
            f"\nbacklog: {args.backlog} pulses drained in {elapsed:.2f} s = "
            f"{args.backlog / elapsed:,.0f} pulses/s, in {xacts} transactions "
            f"(including the processor's start-up)"
        )

        cpu, memory = idle_usage(stack, args.idle)
        each = ", ".join(f"{name} {pct:.3f} %" for name, pct in cpu.items())
        print(
            f"\nidle: {sum(cpu.values()):.3f} % CPU of one core for all processes together over "
            f"{args.idle:g} s ({each}; the original polls Redis ten times a second)"
        )
        print("memory (RSS): " + ", ".join(f"{name} {mib:.1f} MiB" for name, mib in memory.items()))
        print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    finally:
        stack.close()


def _route_probe(stack: Stack) -> bool:
    """Once the router answers, a probe key is cleared (and the processor commits it)."""
    stack.r.set("channel:1:metercount", "0", nx=True)
    return False


if __name__ == "__main__":
    main()
