"""A day of SD-card writes: energy-worker and the original stack, side by side, long enough to
hold a checkpoint, at a household's rate and at 7 x 1 pulse/s.

Each run has servers of its own, both with bench/fsync_delay.c preloaded (each sync waits and
is counted): energy-worker on docker-compose.yaml's Redis options and PostgreSQL settings (read
from that file), the original on what its stack ran, Redis's and PostgreSQL's defaults
(bench/original_worker.py). The runs go on at the same time, so a full run takes one window's
length. Each: start, warm up, wait until every pulse is committed, ANALYZE and VACUUM FREEZE
of every database (what autovacuum does once after a new cluster and a set-up) and CHECKPOINT,
then the window: its start LSN, a CHECKPOINT (as the timed one would come: the first change of
every page after it writes the whole page to the WAL, which is what a day repeats), the load,
the wait until every pulse of it is committed, a CHECKPOINT (the window's pages written and
synced), its end LSN. Between the two LSNs pg_waldump says what wrote the WAL, by record type
and by relation, and how many full-page images there were (the bench's servers keep the WAL
for it with wal_keep_size, which changes nothing that is written).

Per day is the window's figure times 86,400 / its length. With energy-worker's
checkpoint_timeout longer than the window, that counts its full-page images more often than a
day has them (an upper bound); "checkpoints as configured" counts them once per
checkpoint_timeout, as a day has them, and is what the target compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from arduino import LoadResult, drive
from servers import (
    PrivatePostgres,
    PrivateRedis,
    SyncCounter,
    SyncCounts,
    SyncDelay,
    compose_postgres_settings,
    compose_redis_options,
    wait_until,
)
from workerstack import Database, WorkerStack

DATABASE = "energy"
DAY_S = 86_400
OURS, ORIGINAL = "energy-worker", "original"
QUIET_TIMEOUT = 180.0
KEEP_WAL = {"wal_keep_size": "4GB"}  # the window's WAL stays for pg_waldump
WAL_TARGET_7X1 = 150  # bytes of WAL per pulse at 7 x 1/s, full-page images included
FSYNC_TARGET = 0.2  # PostgreSQL + Redis syncs per pulse
_RECORD_LEN = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+)")
_FIRST_REL = re.compile(r"blkref #0: rel \d+/\d+/(\d+)")
_STATS_LINE = re.compile(
    r"^(?P<type>\S+)\s+(?P<n>\d+)\s+\(\s*[\d.]+\)\s+(?P<rec>\d+)\s+\(\s*[\d.]+\)\s+"
    r"(?P<fpi>\d+)\s+\(\s*[\d.]+\)\s+(?P<total>\d+)"
)


@dataclass
class Run:
    stack: str
    rate: float  # pulses/s, all meters together
    meters: int
    load: LoadResult | None = None
    seconds: float = 0.0
    wal_bytes: int = 0
    fpi_count: int = 0
    fpi_bytes: int = 0
    records: int = 0
    by_type: list[tuple[str, int, int, int]] | None = None  # type, n, record bytes, fpi bytes
    checkpoints: int = 0
    postgres: SyncCounts | None = None
    redis: SyncCounts | None = None
    redis_bytes: int = 0
    counted: str = "-"
    checkpoint_timeout_s: int = 300
    by_relation: dict[str, int] = field(default_factory=dict)  # WAL bytes, FPIs included
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.stack} at {self.rate:g}/s"

    @property
    def pulses(self) -> int:
        return max(self.load.delivered if self.load else 0, 1)

    def per_pulse(self, value: float) -> float:
        return value / self.pulses

    def per_day(self, value: float) -> float:
        return value * DAY_S / max(self.seconds, 1e-9)

    def per_day_at_timeout(self) -> float:
        """WAL bytes a day with the server's own checkpoint_timeout: the full-page images come
        once per checkpoint, each hot page's first change after it; the rest with the pulses."""
        cycles = max(self.seconds, self.checkpoint_timeout_s)
        return self.per_day(self.wal_bytes - self.fpi_bytes) + self.fpi_bytes * DAY_S / cycles

    def figures(self) -> dict[str, float]:
        pg = self.postgres.syncs if self.postgres else 0
        rs = self.redis.syncs if self.redis else 0
        return {
            "wal_bytes_per_pulse": self.per_pulse(self.wal_bytes),
            "fpi_bytes_per_pulse": self.per_pulse(self.fpi_bytes),
            "full_page_images": self.fpi_count,
            "postgres_fsyncs_per_pulse": self.per_pulse(pg),
            "redis_fsyncs_per_pulse": self.per_pulse(rs),
            "fsyncs_per_pulse": self.per_pulse(pg + rs),
            "redis_bytes_per_pulse": self.per_pulse(self.redis_bytes),
            "wal_mb_per_day": self.per_day(self.wal_bytes) / 1e6,
            "wal_mb_per_day_at_checkpoint_timeout": self.per_day_at_timeout() / 1e6,
            "fpi_mb_per_day": self.per_day(self.fpi_bytes) / 1e6,
            "full_page_images_per_day": self.per_day(self.fpi_count),
            "postgres_fsyncs_per_day": self.per_day(pg),
            "redis_fsyncs_per_day": self.per_day(rs),
            "redis_mb_per_day": self.per_day(self.redis_bytes) / 1e6,
        }

    def summary(self) -> dict[str, object]:
        return {
            "stack": self.stack,
            "pulses_per_s": self.rate,
            "seconds": round(self.seconds, 1),
            "load": self.load.summary() if self.load else None,
            "counted": self.counted,
            "wal_bytes": self.wal_bytes,
            "wal_records": self.records,
            "full_page_images": self.fpi_count,
            "fpi_bytes": self.fpi_bytes,
            "checkpoints": self.checkpoints,
            "postgres_sync_calls": self.postgres.__dict__ if self.postgres else None,
            "redis_sync_calls": self.redis.__dict__ if self.redis else None,
            "redis_bytes": self.redis_bytes,
            "figures": {k: round(v, 4) for k, v in self.figures().items()},
            "wal_by_record_type": [
                {"type": t, "n": n, "record_bytes": rec, "fpi_bytes": fpi}
                for t, n, rec, fpi in self.by_type or []
            ],
            "wal_by_relation": dict(
                sorted(self.by_relation.items(), key=lambda kv: kv[1], reverse=True)
            ),
            "error": self.error,
        }


# --- PostgreSQL -------------------------------------------------------------------------------


def one(pg: PrivatePostgres, sql: str, database: str = "postgres") -> object:
    with contextlib.closing(pg.connect(database)) as con:
        rows = con.run(sql)
    return rows[0][0] if rows else None


def lsn(pg: PrivatePostgres) -> str:
    return str(one(pg, "SELECT pg_current_wal_lsn()"))


def checkpoints(pg: PrivatePostgres) -> int:
    return int(str(one(pg, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")))


RecordType = tuple[str, int, int, int]  # type, records, record bytes, FPI bytes


def waldump(
    pg: PrivatePostgres, start: str, end: str
) -> tuple[list[RecordType], int, dict[str, int]]:
    """pg_waldump between two LSNs: (type, records, record bytes, FPI bytes) by record type,
    largest first; the number of full-page images; and bytes by relation (file node) of each
    record's first block ('-': records of no relation, such as commits)."""
    tool = str(pg.bin / "pg_waldump")
    wal = str(pg.data / "pg_wal")
    stats = subprocess.run(
        [tool, "--stats=record", "-p", wal, "-s", start, "-e", end],
        capture_output=True, text=True, check=False, **pg.run_as,
    ).stdout  # fmt: skip
    rows = []
    for line in stats.splitlines():
        m = _STATS_LINE.match(line)
        if m and m["type"] != "Total":
            rows.append((m["type"], int(m["n"]), int(m["rec"]), int(m["fpi"])))
    rows.sort(key=lambda r: r[2] + r[3], reverse=True)
    listing = subprocess.Popen(
        [tool, "-p", wal, "-s", start, "-e", end],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **pg.run_as,
    )  # fmt: skip
    assert listing.stdout is not None
    fpis = 0
    by_relation: dict[str, int] = {}
    for line in listing.stdout:
        fpis += line.count(" FPW")
        size, rel = _RECORD_LEN.search(line), _FIRST_REL.search(line)
        if size:
            key = rel[1] if rel else "-"
            by_relation[key] = by_relation.get(key, 0) + int(size[1])
    listing.wait()
    return rows, fpis, by_relation


def relation_names(pg: PrivatePostgres) -> dict[str, str]:
    """File node -> name of the worker's database's relations (catalogs included)."""
    with contextlib.closing(pg.connect(DATABASE)) as con:
        rows = con.run(
            "SELECT pg_relation_filenode(oid)::text, relname FROM pg_class "
            "WHERE pg_relation_filenode(oid) IS NOT NULL"
        )
    return {str(node): str(name) for node, name in rows}


def counted_pulses(pg: PrivatePostgres, stack: str) -> int:
    column = "pulses_counted" if stack == OURS else "meter_counts"
    return int(str(one(pg, f"SELECT coalesce(sum({column}), 0) FROM meter_status", DATABASE)))


# --- Redis ------------------------------------------------------------------------------------


def redis_written(rs: PrivateRedis) -> int:
    """Bytes Redis has written to its files so far: the AOF's growth (a rewrite would start it
    over, and is counted as the new file's size) and, without an AOF, its RDB snapshots."""
    info = rs.client().info("persistence")
    aof = int(info.get("aof_current_size", 0)) if info.get("aof_enabled") else 0
    rdb_files = list((rs.folder / "redis-data").glob("*.rdb"))
    rdb = sum(f.stat().st_size for f in rdb_files) * int(info.get("rdb_saves", 0))
    return aof + rdb


# --- one run ----------------------------------------------------------------------------------


class Worker:
    """The stack under test: energy-worker through entrypoint.sh, or the original's model."""

    def __init__(self, stack: str, folder: Path, pg: PrivatePostgres, rs: PrivateRedis) -> None:
        self.stack = stack
        self.folder = folder
        self.rs = rs
        self.ours: WorkerStack | None = None
        self.original: subprocess.Popen[bytes] | None = None
        if stack == OURS:
            self.ours = WorkerStack(folder, Database("127.0.0.1", pg.port, DATABASE), rs.port)
        self.pg = pg

    def start(self) -> None:
        if self.ours:
            self.ours.start()
            return
        with (self.folder / "original.log").open("ab") as log:
            self.original = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("original_worker.py")),
                 str(self.rs.port), str(self.pg.port), DATABASE],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(
            lambda: "entering its loop" in (self.folder / "original.log").read_text(),
            60, "the original worker to start",
        )  # fmt: skip

    def wait_quiet(self) -> None:
        if self.ours:
            self.ours.wait_quiet(QUIET_TIMEOUT)
        else:  # it commits each pulse before it deletes its key
            wait_until(lambda: self.rs.client().dbsize() == 0, QUIET_TIMEOUT, "the original")

    def stop(self) -> None:
        if self.ours:
            self.ours.stop()
        if self.original and self.original.poll() is None:
            self.original.terminate()
            self.original.wait(30)


def one_run(run: Run, folder: Path, delay: SyncDelay, duration: float, warmup: float) -> None:
    folder.mkdir()
    tag = f"{run.stack}-{run.rate:g}"
    redis_counter = SyncCounter(folder / f"{tag}-redis.syncs")
    pg_counter = SyncCounter(folder / f"{tag}-postgres.syncs")
    ours = run.stack == OURS
    per_meter = run.rate / run.meters
    with contextlib.ExitStack() as cleanup:
        rs = PrivateRedis(folder, compose_redis_options() if ours else [])
        cleanup.callback(rs.stop)
        rs.start(delay.environment(redis_counter))
        pg = PrivatePostgres(folder)
        cleanup.callback(pg.stop)
        settings = compose_postgres_settings() if ours else {}
        pg.start(delay.environment(pg_counter), {**settings, **KEEP_WAL})
        with contextlib.closing(pg.connect()) as con:
            con.run(f'CREATE DATABASE "{DATABASE}"')
        worker = Worker(run.stack, folder, pg, rs)
        cleanup.callback(worker.stop)
        worker.start()
        asyncio.run(drive(rs.port, per_meter, warmup, run.meters))  # every code path once
        worker.wait_quiet()

        # What autovacuum does once after a new cluster (every database's catalogs, template1's
        # too: analysed, then frozen) and a set-up (the new tables, the catalogs creating them
        # churned): a day after a start has no such thing in it. ANALYZE first: its old
        # statistics are dead rows that VACUUM then removes. And what the set-up and the
        # warm-up dirtied is written out.
        for database in ("template1", "postgres", DATABASE):
            with contextlib.closing(pg.connect(database)) as con:
                con.run("ANALYZE")
                con.run("VACUUM (FREEZE)")
        one(pg, "CHECKPOINT")
        run.checkpoint_timeout_s = int(
            str(one(pg, "SELECT setting FROM pg_settings WHERE name = 'checkpoint_timeout'"))
        )
        counted0 = counted_pulses(pg, run.stack)
        start, cp0 = lsn(pg), checkpoints(pg)
        pg0, r0, written0 = pg_counter.read(), redis_counter.read(), redis_written(rs)
        began = time.monotonic()
        one(pg, "CHECKPOINT")
        run.load = asyncio.run(drive(rs.port, per_meter, duration, run.meters))
        worker.wait_quiet()
        one(pg, "CHECKPOINT")  # the window's pages written and synced, as the next one would
        run.seconds = time.monotonic() - began
        end = lsn(pg)
        run.postgres, run.redis = pg_counter.read() - pg0, redis_counter.read() - r0
        run.redis_bytes = redis_written(rs) - written0
        run.checkpoints = checkpoints(pg) - cp0
        run.wal_bytes = int(str(one(pg, f"SELECT pg_wal_lsn_diff('{end}', '{start}')")))
        pulses = counted_pulses(pg, run.stack) - counted0
        run.counted = "exact" if pulses == run.load.delivered else f"{pulses} (!)"
        run.by_type, run.fpi_count, by_node = waldump(pg, start, end)
        names = relation_names(pg)
        for node, size in by_node.items():
            name = names.get(node, "(no relation)" if node == "-" else f"(file {node})")
            run.by_relation[name] = run.by_relation.get(name, 0) + size
        run.records = sum(r[1] for r in run.by_type)
        run.fpi_bytes = sum(r[3] for r in run.by_type)


def run_sd_day(
    folder: Path, delay_ms: float, duration: float, warmup: float, rates: list[float], meters: int
) -> dict[str, object]:
    delay = SyncDelay(folder, delay_ms)
    runs = [Run(stack, rate, meters) for rate in rates for stack in (OURS, ORIGINAL)]
    print(
        f"\nA day of SD-card writes: {len(runs)} runs at once, {duration:g} s each with a "
        f"CHECKPOINT at its start; every sync waits {delay_ms:g} ms and is counted\n"
        f"energy-worker: docker-compose.yaml's redis-db options and postgres-db settings "
        f"({', '.join(f'{k}={v}' for k, v in compose_postgres_settings().items())}); "
        "original: Redis's and PostgreSQL's defaults",
        flush=True,
    )

    def guarded(run: Run, i: int) -> None:
        try:
            one_run(run, folder / f"day-{i}", delay, duration, warmup)
        except (Exception, SystemExit) as exc:  # reported with the run
            run.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    threads = [threading.Thread(target=guarded, args=(r, i)) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print_day(runs, meters)
    failed = [r for r in runs if r.error]
    if failed:
        raise SystemExit("bench: " + "; ".join(f"{r.name}: {r.error}" for r in failed))
    return {
        "seconds": duration,
        "delay_ms": delay_ms,
        "postgres_settings": compose_postgres_settings(),
        "runs": [r.summary() for r in runs],
        "targets": targets(runs),
    }


def targets(runs: list[Run]) -> dict[str, object]:
    by = {(r.stack, r.rate): r for r in runs}
    result: dict[str, object] = {}
    for (stack, rate), run in by.items():
        if stack != OURS:
            continue
        figures = run.figures()
        if rate == run.meters:  # 7 x 1/s
            result[f"wal_bytes_per_pulse_at_{rate:g}"] = {
                "value": round(figures["wal_bytes_per_pulse"], 1),
                "target": WAL_TARGET_7X1,
                "met": figures["wal_bytes_per_pulse"] <= WAL_TARGET_7X1,
            }
        original = by.get((ORIGINAL, rate))
        if original:  # a day as each server's checkpoint_timeout makes it
            day = "wal_mb_per_day_at_checkpoint_timeout"
            ratio = figures[day] / max(original.figures()[day], 1e-9)
            result[f"wal_per_day_ratio_to_original_at_{rate:g}"] = {
                "value": round(ratio, 3), "target": 0.5, "met": ratio <= 0.5,
            }  # fmt: skip
        result[f"fsyncs_per_pulse_at_{rate:g}"] = {
            "value": round(figures["fsyncs_per_pulse"], 3),
            "target": FSYNC_TARGET,
            "met": figures["fsyncs_per_pulse"] <= FSYNC_TARGET,
        }
    return result


def print_day(runs: list[Run], meters: int) -> None:
    ok = [r for r in runs if not r.error]
    header = "".join(f"{r.stack + f' {r.rate:g}/s':>22}" for r in ok)
    print(f"\n{'':<32}{header}")

    def row(name: str, cells: list[str]) -> None:
        print(f"{name:<32}" + "".join(f"{c:>22}" for c in cells))

    row("pulses delivered (lost)", [f"{r.load.delivered} ({r.load.lost})" for r in ok if r.load])
    row("counted", [r.counted for r in ok])
    row("window, s (checkpoints)", [f"{r.seconds:.0f} ({r.checkpoints})" for r in ok])
    figures = [r.figures() for r in ok]
    for key, label, fmt in (
        ("wal_bytes_per_pulse", "WAL bytes / pulse", "{:.0f}"),
        ("fpi_bytes_per_pulse", "  of it full-page images", "{:.0f}"),
        ("full_page_images", "full-page images (window)", "{:.0f}"),
        ("postgres_fsyncs_per_pulse", "PostgreSQL fsyncs / pulse", "{:.3f}"),
        ("redis_fsyncs_per_pulse", "Redis fsyncs / pulse", "{:.3f}"),
        ("redis_bytes_per_pulse", "Redis bytes written / pulse", "{:.0f}"),
        ("wal_mb_per_day", "WAL MB / day", "{:.1f}"),
        ("wal_mb_per_day_at_checkpoint_timeout", "  checkpoints as configured", "{:.1f}"),
        ("fpi_mb_per_day", "  of it full-page images", "{:.1f}"),
        ("postgres_fsyncs_per_day", "PostgreSQL fsyncs / day", "{:,.0f}"),
        ("redis_fsyncs_per_day", "Redis fsyncs / day", "{:,.0f}"),
        ("redis_mb_per_day", "Redis MB written / day", "{:.1f}"),
    ):
        row(label, [fmt.format(f[key]) for f in figures])
    for r in ok:
        print(f"\nWAL of {r.name} by record type (pg_waldump --stats=record, the window's LSNs):")
        print(f"  {'type':<28}{'records':>9}{'bytes':>11}{'FPI bytes':>11}{'B/pulse':>9}")
        for t, n, rec, fpi in (r.by_type or [])[:10]:
            print(f"  {t:<28}{n:>9}{rec:>11}{fpi:>11}{(rec + fpi) / r.pulses:>9.1f}")
        print("  by relation (the record's first block), bytes with full-page images, B/pulse:")
        ranked = sorted(r.by_relation.items(), key=lambda kv: kv[1], reverse=True)[:8]
        print("  " + ", ".join(f"{name} {size / r.pulses:.1f}" for name, size in ranked))
    for name, target in targets(ok).items():
        assert isinstance(target, dict)
        print(f"target {name}: {target['value']} (<= {target['target']}: "
              f"{'met' if target['met'] else 'NOT met'})")  # fmt: skip
    print(f"(meters: {meters}; per day = the window's figure x 86,400 / its length)", flush=True)
