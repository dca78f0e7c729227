"""The benchmark's figures in bench/README.md, written from its results so that they never drift.

Each mode owns one section of bench/README.md between `<!-- figures:MODE:start -->` and
`<!-- figures:MODE:end -->`; a run of that mode rewrites it (with the command, the day and the
machine), and nothing else of the file. Pure: a report dict (the one `--json` writes) in,
Markdown out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).with_name("README.md")
MODES = ("plain", "sd", "sd-day")
REPORT_KEYS = {"plain": "plain", "sd": "sd", "sd-day": "sd_day"}

# The original stack's figures on this kind of machine (docs/DOMAIN.md): its code is not in this
# repository, so these are a reference column, not a run. Rate -> (lost %, p50 ms, p99 ms).
ORIGINAL_LOAD = {2: (0, 193, 425), 5: (34, 366, 451), 10: (69, 395, 491)}
# ... and per pulse at 7 x 1 pulse/s on an SD card.
ORIGINAL_SD = {
    "redis_syncs": 0.0,
    "postgres_syncs": 1.72,
    "commits": 7.26,
    "wal_bytes": 347.0,
    "cpu_core_pct": 2.3,
    "pss_mib": 32.0,
    "processes": 1,
}


class MarkersMissing(ValueError):
    pass


def markers(mode: str) -> tuple[str, str]:
    return f"<!-- figures:{mode}:start -->", f"<!-- figures:{mode}:end -->"


def replace_section(text: str, mode: str, body: str) -> str:
    """The text with the mode's section replaced by `body`; raises MarkersMissing when the
    section is not there exactly once."""
    start, end = markers(mode)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise MarkersMissing(f"bench/README.md has no single {start} ... {end} section")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


def rewrite(report: dict[str, Any], readme: Path = README) -> list[str]:
    """Rewrite the section of every mode the report holds; the modes rewritten."""
    text = readme.read_text()
    done = []
    for mode in MODES:
        part = report.get(REPORT_KEYS[mode])
        if isinstance(part, dict):
            text = replace_section(text, mode, render(mode, part, report))
            done.append(mode)
    readme.write_text(text)
    return done


def render(mode: str, part: dict[str, Any], report: dict[str, Any]) -> str:
    body = {"plain": plain, "sd": sd, "sd-day": sd_day}[mode](part)
    return f"{provenance(report)}\n\n{body}"


def provenance(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    return (
        f"*Written by `{report.get('command', 'bench/bench.py')}` on {report.get('date', '?')}: "
        f"{machine.get('cores', '?')} cores, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}.*"
    )


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _counted(load: dict[str, Any]) -> str:
    return str(load.get("counted", "-"))


def plain(part: dict[str, Any]) -> str:
    lines = [
        "| meters x pulses/s each | lost | key cleared p50 / p99 | counted "
        "| original: lost, p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for load in part.get("load", []):
        rate = load["rate_per_meter"]
        ref = ORIGINAL_LOAD.get(int(rate)) if rate == int(rate) else None
        original = f"{ref[0]} %, {ref[1]} / {ref[2]} ms" if ref else ""
        lines.append(
            f"| {load['meters']} x {rate:g} | {load['lost']} of {_n(load['generated'])} "
            f"| {load['p50_ms']:.1f} / {load['p99_ms']:.1f} ms | {_counted(load)} | {original} |"
        )
    outage = part.get("outage")
    if outage:
        lines.append(
            f"| PostgreSQL down for {outage['seconds'] / 2:g} s of {outage['seconds']:g} s, "
            f"{outage['meters']} x {outage['rate_per_meter']:g} "
            f"| {outage['lost']} of {_n(outage['generated'])} | p99 {outage['p99_ms']:.1f} ms "
            f"| {_counted(outage)} | crashed, 86 % lost |"
        )
    backlog, idle = part.get("backlog"), part.get("idle")
    if backlog:
        lines.append(
            f"\nA backlog of {_n(backlog['items'])} pulses drains in {backlog['seconds']:.1f} s "
            f"({_n(backlog['per_second'])} pulses/s, {backlog['transactions']} transactions)."
        )
    if idle:
        lines.append(
            f"Idle, all processes together use {idle['cpu_pct']:.3f} % of one core over "
            f"{idle['seconds']:g} s (the original polls Redis ten times a second)."
        )
    return "\n".join(lines)


def sd(part: dict[str, Any]) -> str:
    ours, o = part["per_pulse_at_7x1"], ORIGINAL_SD
    load = part["load_7x1"]
    rows = [
        ("Redis fsyncs", f"{ours['redis_syncs']:.2f}", f"{o['redis_syncs']:g}"),
        ("PostgreSQL fsyncs", f"{ours['postgres_syncs']:.2f}", f"{o['postgres_syncs']:g}"),
        ("PostgreSQL commits", f"{ours['commits']:.2f}", f"{o['commits']:g}"),
        ("WAL bytes", f"{ours['wal_bytes']:.0f}", f"{o['wal_bytes']:g}"),
        (
            "CPU",
            f"{ours['cpu_ms']:.2f} ms ({ours['cpu_core_pct']:.2f} % of one core)",
            f"{o['cpu_core_pct']:g} % of one core",
        ),
        (
            "memory (PSS, all processes)",
            f"{ours['pss_mib']:.0f} MiB in {ours['processes']:g} processes",
            f"{o['pss_mib']:g} MiB in {o['processes']:g}",
        ),
        ("pulses lost", f"{load['lost']} of {_n(load['generated'])}, counted {_counted(load)}", ""),
    ]
    lines = [
        f"Every sync delayed {part['delay_ms']:g} ms and counted, 7 meters x 1 pulse/s for "
        f"{load['seconds']:g} s:",
        "",
        "| per pulse | energy-worker | original |",
        "|---|---|---|",
        *(f"| {name} | {ours_} | {orig} |" for name, ours_, orig in rows),
    ]
    fast, ideal = part.get("load_7x5"), part.get("ideal", {}).get("7x5")
    if fast and ideal:
        lines.append(
            f"\nUnder the same delay at 7 x 5 pulses/s, key-clear p99 is {fast['p99_ms']:.1f} ms "
            f"against {ideal['p99_ms']:.1f} ms for an ideal worker that only takes each key "
            f"({part['p99_ratio_to_ideal_at_7x5']:.2f} times the floor; target at most 1.5)."
        )
    memory = part.get("memory_mib", {})
    service = ("supervisord", "router", "processor", "pusher")
    if all(name in memory for name in service):
        each = ", ".join(f"{name} {memory[name]['pss']:.0f}" for name in service)
        lines.append(
            f"The service's PSS (supervisord with the exit listener, and the three programs): "
            f"{ours['service_pss_mib']:.0f} MiB ({each}; target at most 95 MiB on this "
            f"machine, about 1.4 times less on a 32-bit Pi)."
        )
    publisher = part.get("publisher")
    if publisher:
        lines.append(
            f"The MQTT publisher, when configured, adds {publisher['cpu_core_pct']:.2f} % of one "
            f"core and {publisher['pss_mib']:.0f} MiB."
        )
    return "\n".join(lines)


def sd_day(part: dict[str, Any]) -> str:
    runs = [r for r in part["runs"] if not r.get("error")]
    head = [f"{r['stack']}, {r['pulses_per_s']:g}/s" for r in runs]
    lines = [
        f"Windows of {part['seconds']:g} s, every sync delayed {part['delay_ms']:g} ms; per day "
        "(per pulse), full-page images counted once per each server's `checkpoint_timeout`:",
        "",
        "| per day (per pulse) | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(runs),
    ]

    def row(name: str, cell: Any) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(r, r["figures"]) for r in runs) + " |")

    row("WAL", lambda r, f: (
        f"{f['wal_mb_per_day_at_checkpoint_timeout']:.0f} MB ({f['wal_bytes_per_pulse']:.0f} B)"
    ))  # fmt: skip
    row("of it full-page images", lambda r, f: (
        f"{f['fpi_mb_per_day']:.1f} MB ({f['full_page_images']:.0f} in the window)"
    ))  # fmt: skip
    row("PostgreSQL fsyncs", lambda r, f: (
        f"{_n(f['postgres_fsyncs_per_day'])} ({f['postgres_fsyncs_per_pulse']:.2f})"
    ))  # fmt: skip
    row("Redis fsyncs", lambda r, f: (
        f"{_n(f['redis_fsyncs_per_day'])} ({f['redis_fsyncs_per_pulse']:.2f})"
    ))  # fmt: skip
    row("Redis bytes written (AOF)", lambda r, f: (
        f"{f['redis_mb_per_day']:.0f} MB ({f['redis_bytes_per_pulse']:.0f} B)"
    ))  # fmt: skip
    row("pulses lost, counted", lambda r, f: (
        f"{r['load']['lost']} of {_n(r['load']['generated'])}, {r['counted']}"
        if r.get("load") else "-"
    ))  # fmt: skip
    lines.append("")
    for name, target in part.get("targets", {}).items():
        verdict = "met" if target["met"] else "not met"
        lines.append(f"- {name.replace('_', ' ')}: {target['value']} "
                     f"(target at most {target['target']}: {verdict})")  # fmt: skip
    return "\n".join(lines)


def how_run(args: list[str]) -> list[str]:
    """The options that made the figures, for bench/README.md: not where --json wrote them (a
    path of the machine it ran on)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    return kept
