"""bench/README.md's figures are written by the benchmark (bench/figures.py), between markers:
every mode's section is there once, a run rewrites its own and nothing else of the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import figures

LOAD = {
    "rate_per_meter": 2.0,
    "meters": 7,
    "seconds": 30,
    "generated": 419,
    "lost": 0,
    "lost_pct": 0.0,
    "delivered": 419,
    "p50_ms": 1.31,
    "p99_ms": 2.24,
    "uncleared": 0,
}
FIGURES = {
    "wal_bytes_per_pulse": 76.2,
    "fpi_bytes_per_pulse": 3.0,
    "full_page_images": 11,
    "postgres_fsyncs_per_pulse": 0.05,
    "redis_fsyncs_per_pulse": 0.15,
    "fsyncs_per_pulse": 0.2,
    "redis_bytes_per_pulse": 453,
    "wal_mb_per_day": 46.0,
    "wal_mb_per_day_at_checkpoint_timeout": 45.2,
    "fpi_mb_per_day": 0.7,
    "full_page_images_per_day": 1584,
    "postgres_fsyncs_per_day": 29_900,
    "redis_fsyncs_per_day": 86_900,
    "redis_mb_per_day": 270.4,
}
REPORT = {
    "machine": {"cores": 2, "python": "3.13.5", "platform": "Linux-x86_64"},
    "command": "bench/bench.py",
    "date": "2026-12-07",
    "plain": {
        "load": [
            {**LOAD, "counted": "exact"},
            {**LOAD, "rate_per_meter": 20.0, "generated": 4200, "p99_ms": 1.8, "counted": "exact"},
        ],
        "outage": {**LOAD, "seconds": 40, "generated": 559, "counted": "exact", "running": []},
        "idle": {"seconds": 20, "cpu_pct": 0.0042},
        "backlog": {"items": 100_000, "seconds": 4.21, "per_second": 23_753, "transactions": 22},
    },
    "sd": {
        "delay_ms": 5.0,
        "per_pulse_at_7x1": {
            "redis_syncs": 0.1512,
            "postgres_syncs": 0.05,
            "commits": 0.03,
            "wal_bytes": 107.4,
            "cpu_ms": 0.64,
            "cpu_core_pct": 0.45,
            "pss_mib": 87.3,
            "processes": 5,
            "service_pss_mib": 86.1,
        },
        "load_7x1": {**LOAD, "seconds": 60, "counted": "exact"},
        "load_7x5": {**LOAD, "p99_ms": 2.0},
        "ideal": {"7x5": {**LOAD, "p99_ms": 1.9}},
        "p99_ratio_to_ideal_at_7x5": 1.053,
        "memory_mib": {
            name: {"pss": pss, "rss": 30.0}
            for name, pss in (
                ("supervisord", 14.2),
                ("router", 20.1),
                ("processor", 23.0),
                ("pusher", 28.8),
            )
        },
        "publisher": {"seconds": 20, "cpu_core_pct": 0.25, "pss_mib": 19.2, "rss_mib": 30.0},
    },
    "sd_day": {
        "seconds": 600,
        "delay_ms": 5.0,
        "runs": [
            {
                "stack": stack,
                "pulses_per_s": 7.0,
                "load": {**LOAD, "generated": 4199},
                "counted": "exact",
                "figures": FIGURES,
            }
            for stack in ("energy-worker", "original")
        ],
        "targets": {"wal_bytes_per_pulse_at_7": {"value": 76.2, "target": 150, "met": True}},
    },
}


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    copy = tmp_path / "README.md"
    copy.write_text((REPO / "bench" / "README.md").read_text())
    return copy


def outside_the_sections(text: str) -> list[str]:
    """The text around every mode's section."""
    pieces = [text]
    for mode in figures.MODES:
        start, end = figures.markers(mode)
        head, _, rest = pieces.pop().partition(start)
        _, _, tail = rest.partition(end)
        pieces += [head, tail]
    return pieces


def test_a_run_writes_every_section_it_measured_and_nothing_else(readme: Path):
    before = readme.read_text()
    assert figures.rewrite(REPORT, readme) == ["plain", "sd", "sd-day"]
    after = readme.read_text()
    assert outside_the_sections(after) == outside_the_sections(before)
    assert "0 of 4,200 | 1.3 / 1.8 ms | exact" in after  # the plain table, from the results
    assert "| WAL bytes | 107 | 347 |" in after  # ours beside the original's reference
    assert "100,000 pulses drains in 4.2 s" in after
    assert "86 MiB (supervisord 14, router 20, processor 23, pusher 29" in after
    assert "| WAL | 45 MB (76 B) | 45 MB (76 B) |" in after
    assert "*Written by `bench/bench.py` on 2026-12-07: 2 cores" in after
    figures.rewrite(REPORT, readme)
    assert readme.read_text() == after  # the same results write the same text


def test_a_run_of_one_mode_leaves_the_other_modes_figures(readme: Path):
    before = readme.read_text()
    assert figures.rewrite({**REPORT, "plain": None, "sd_day": None}, readme) == ["sd"]
    start, end = figures.markers("sd")
    kept = before.split(start)[0], before.split(end)[1]
    after = readme.read_text()
    assert after.split(start)[0] == kept[0] and after.split(end)[1] == kept[1]
    assert after != before


def test_a_readme_without_the_markers_is_refused_not_appended_to(readme: Path):
    start, _ = figures.markers("sd-day")
    readme.write_text(readme.read_text().replace(start, ""))
    with pytest.raises(figures.MarkersMissing):
        figures.rewrite(REPORT, readme)


def test_the_command_shown_leaves_out_where_the_results_went():
    assert figures.how_run(["--only", "sd", "--json", "/x/b.json", "--no-figures"]) == [
        "--only",
        "sd",
        "--no-figures",
    ]
    assert figures.how_run(["--json=/x/b.json", "--only", "plain"]) == ["--only", "plain"]
