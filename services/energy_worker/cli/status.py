"""`energy-worker status`: each meter, the pipeline, dead letters and pushes, in one look; the
exit status says whether something needs attention (the rules: cli/health.py).

It costs the servers a handful of reads, plus one more look at the backlog a second later when
there is one (to show whether it grows).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis

from energy_worker.adapters import config
from energy_worker.adapters.config import COMMIT_INTERVAL
from energy_worker.adapters.postgres import Connection
from energy_worker.adapters.sql import reports
from energy_worker.adapters.work_queue import DEADLETTER, Queues
from energy_worker.cli import health, show
from energy_worker.cli.deadletters import Entry, read_entries
from energy_worker.cli.session import EXIT_ATTENTION, EXIT_OK, Session
from energy_worker.core import totals
from energy_worker.core.domain import Meter

LATEST_DEADLETTERS = 5
SUPERVISOR_TIMEOUT = 5.0  # seconds for supervisord's answer
TREND_LOOK_S = 1.0  # the second look at a backlog


@dataclass(frozen=True)
class MeterStatus:
    number: int
    name: str
    in_postgres: bool
    pulses_per_kwh: int
    kwh: Decimal | None = None
    last_power_w: int | None = None  # the latest pulse's measured power; None: it had none
    at_most_w: int | None = None  # the bound now, while it is below what the pulse allows
    last_pulse: datetime | None = None
    quiet_s: float | None = None
    pulses_today: int | None = None
    kwh_today: Decimal | None = None  # counted by pulses (energy_per_period)
    began_today: bool = False  # its history began today with a pulse, which adds no energy


@dataclass
class Report:
    at: datetime
    tz: ZoneInfo
    meters: list[MeterStatus]
    pulses_today_from: str
    backlog: int
    backlog_change: int | None  # over TREND_LOOK_S, when there was a backlog
    oldest_wait_s: float | None
    last_commit: datetime | None
    last_commit_age_s: float | None
    committing: bool
    programs: dict[str, str] | None
    programs_note: str
    deadletters: int
    deadletters_recent: int
    latest: list[Entry]
    pushes: reports.Pushes
    push_failing_s: float | None
    attention: list[str] = field(default_factory=list)


# --- supervisord ------------------------------------------------------------------------------


def program_states(run_dir: Path) -> tuple[dict[str, str] | None, str]:
    """supervisord's programs and their states, or None and why not: through supervisor's own
    transport, over the unix socket supervisorctl uses."""
    from supervisor.xmlrpc import SupervisorTransport  # noqa: PLC0415 - only `status` pays

    sock = run_dir / "supervisor.sock"
    transport = SupervisorTransport(None, None, f"unix://{sock}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    previous = socket.getdefaulttimeout()
    # the transport takes no timeout; its socket takes the default one, made for this call
    socket.setdefaulttimeout(SUPERVISOR_TIMEOUT)
    try:
        info: Any = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return None, f"supervisord does not answer at {sock} ({type(exc).__name__})"
    finally:
        socket.setdefaulttimeout(previous)
        transport.close()
    return {str(p["name"]): str(p["statename"]) for p in info}, ""


# --- gathering --------------------------------------------------------------------------------


def gather(session: Session) -> Report:
    configured = session.meters()
    tz = session.zone()
    r = session.redis()
    con = session.postgres()
    now = reports.clock(con)
    attention: list[str] = []
    queues = Queues(r)
    # Before the history is read: a pulse committed in between is then in both.
    unsettled = queues.oldest_waiting()
    meters = meter_statuses(con, configured, now, tz, attention, unsettled)

    backlog = queues.backlog()
    change = None
    if backlog:
        time.sleep(TREND_LOOK_S)  # a second look: does it grow?
        later = queues.backlog()
        change, backlog = later - backlog, later
    oldest = queues.oldest_waiting()
    oldest_wait_s = None if oldest is None else max(time.time() - oldest / 1000, 0.0)
    if health.backlog_stuck(oldest_wait_s):
        attention.append(
            f"the backlog of {backlog} is not being worked off: its oldest pulse has waited "
            f"{show.age(oldest_wait_s)}"
        )
    progress = reports.progress(con)
    last_commit = progress.updated_at if progress else None
    commit_age = None if last_commit is None else (now - last_commit).total_seconds()
    interval = commit_interval(session.env)
    committing = not health.not_committing(backlog, commit_age, oldest_wait_s, interval)
    if not committing:
        attention.append(
            f"the processor is not committing: {backlog} item(s) wait and its last commit was "
            f"{'never' if commit_age is None else show.age(commit_age) + ' ago'}, with one due "
            f"every {interval:g} s (the processor's log says why)"
        )

    programs: dict[str, str] | None = None
    run_dir = session.run_dir()
    if run_dir is None:
        note = "not checked: ENERGY_WORKER_RUN_DIR is not set"
    else:
        programs, note = program_states(run_dir)
        if programs is None:
            attention.append(note)
        for name, state in health.not_running(programs or {}):
            attention.append(f"{name} is not running ({state})")

    count = int(r.llen(DEADLETTER))
    latest = read_entries(r, 0, LATEST_DEADLETTERS - 1)
    recent = recent_entries(r, latest, count)
    if recent:
        attention.append(
            f"{recent} key{'s' if recent > 1 else ''} rejected in the last hour "
            "(energy-worker deadletters)"
        )

    pushes = reports.pushes(con)
    failing_s = (
        None if pushes.failing_since is None else (now - pushes.failing_since).total_seconds()
    )
    if health.push_failing(failing_s) and pushes.head is not None:
        attention.append(
            f"pushes to the Google Sheet have been failing for {show.age(failing_s)} "
            f"({pushes.head.last_error or 'no answer'}); {pushes.pending} wait"
        )
    source = "meter_pulses_at"  # the JSON report's pulses_today_from: one source now
    return Report(
        now, tz, meters, source, backlog, change, oldest_wait_s, last_commit, commit_age,
        committing, programs, note, count, recent, latest, pushes, failing_s, attention,
    )  # fmt: skip


def meter_statuses(
    con: Connection,
    configured: Mapping[int, Meter],
    now: datetime,
    tz: ZoneInfo,
    attention: list[str],
    unsettled_ms: int | None = None,
) -> list[MeterStatus]:
    """Each configured meter as PostgreSQL has it; what needs attention goes to `attention`.
    unsettled_ms: when the oldest pulse still waiting in Redis was taken (ms since 1970):
    PostgreSQL knows that no pulse came only up to there."""
    midnight = totals.day_start(totals.local_day(now, tz), tz)
    rows = {row.meter_no: row for row in reports.meters(con, list(configured))}
    today = reports.pulses_since(con, list(rows), midnight)
    silent_after = reports.silent_after(con)
    reports.use_zone(con, tz.key)
    energy = {
        e.meter_no: e.kwh
        for e in reports.energy_per_period(con, midnight, now, "day")
        if e.start == midnight
    }
    began = {n for n, at in reports.first_pulses(con, list(rows)).items() if at >= midnight}
    unsettled_s = None if unsettled_ms is None else max(time.time() - unsettled_ms / 1000, 0.0)
    meters = []
    for number, meter in configured.items():
        row = rows.get(number)
        if row is None:
            meters.append(MeterStatus(number, meter.name, False, meter.pulses_per_kwh))
            attention.append(
                f"meter {number} is configured but not in PostgreSQL (the set-up has not run "
                "since the meter config changed: restart the service)"
            )
            continue
        quiet_s = None if row.last_pulse is None else (now - row.last_pulse).total_seconds()
        at_most = None
        if quiet_s is not None:
            known_quiet_s = quiet_s - (unsettled_s or 0.0)  # no pulse for at least this long
            at_most = health.power_at_most(
                row.last_watt, row.max_power_w, row.pulses_per_kwh, int(known_quiet_s * 1000)
            )
            if health.meter_silent(row.last_watt, row.pulses_per_kwh, quiet_s, silent_after):
                attention.append(
                    f"meter {number} ({row.name}) has been silent for {show.age(quiet_s)}, "
                    f"after a pulse at {row.last_watt} W"
                )
        meters.append(
            MeterStatus(
                number, row.name, True, row.pulses_per_kwh, row.kwh, row.last_watt, at_most,
                row.last_pulse, quiet_s, today.get(number), energy.get(number), number in began,
            )
        )  # fmt: skip
    return meters


def commit_interval(env: Mapping[str, str]) -> float:
    """The processor's COMMIT_INTERVAL, from the same environment as the service."""
    try:
        return config.commit_interval(env)
    except config.ConfigError:
        return COMMIT_INTERVAL


def recent_entries(r: redis.Redis, latest: list[Entry], count: int) -> int:
    """Dead letters of the last hour (the list is newest first: read on while they are)."""
    since_ms = time.time() * 1000 - health.DEADLETTER_RECENT_S * 1000
    entries = latest
    if len(latest) == LATEST_DEADLETTERS and count > len(latest) and latest[-1].at_ms > since_ms:
        entries = read_entries(r, 0, -1)
    return sum(1 for e in entries if e.at_ms > since_ms)


# --- showing ----------------------------------------------------------------------------------


def as_text(report: Report) -> str:
    tz = report.tz
    lines = [f"energy-worker status at {show.local(report.at, tz)} ({tz.key})", ""]
    rows = []
    for m in report.meters:
        if not m.in_postgres:
            rows.append([str(m.number), m.name, "-", "-", "", "not in PostgreSQL", "-", "-"])
            continue
        today = "-" if m.kwh_today is None else show.kwh(m.kwh_today, m.pulses_per_kwh)
        rows.append(
            [
                str(m.number),
                m.name,
                show.kwh(m.kwh, m.pulses_per_kwh) if m.kwh is not None else "-",
                show.watts(m.last_power_w),
                "" if m.at_most_w is None else f"at most {m.at_most_w} W",
                "never" if m.quiet_s is None else f"{show.age(m.quiet_s)} ago",
                "-" if m.pulses_today is None else str(m.pulses_today),
                today + ("*" if m.began_today else ""),
            ]
        )
    lines.append(
        show.table(
            ["meter", "name", "reading kWh", "last power", "now", "last pulse", "pulses today",
             "kWh today"],
            rows,
            [True, False, True, True, False, True, True, True],
        )
    )  # fmt: skip
    lines.extend(power_notes(report))
    lines.append("")
    backlog = f"backlog {report.backlog}"
    if report.backlog_change is not None:
        trend = report.backlog_change
        backlog += f" ({'+' if trend >= 0 else ''}{trend} in {TREND_LOOK_S:g} s"
        backlog += f", oldest waiting {show.age(report.oldest_wait_s)})"
    commit_age = report.last_commit_age_s
    commit = "never" if commit_age is None else f"{show.age(commit_age)} ago"
    state = "" if report.committing else "; not committing"
    lines.append(f"pipeline      {backlog}; last commit {commit}{state}")
    if report.programs is None:
        lines.append(f"programs      {report.programs_note}")
    else:
        lines.append(
            "programs      "
            + ", ".join(f"{name} {state}" for name, state in sorted(report.programs.items()))
        )
    if report.deadletters:
        lines.append(
            f"dead letters  {report.deadletters} ({report.deadletters_recent} in the last hour); "
            "the latest:"
        )
        for number, entry in enumerate(report.latest, start=1):
            lines.append(f"  {number:>3}  {entry.describe(tz)}")
    else:
        lines.append("dead letters  none")
    lines.append(f"pushes        {push_line(report)}")
    lines.append("")
    if report.attention:
        lines.append("Needs attention:")
        lines.extend(f"  - {problem}" for problem in report.attention)
    else:
        lines.append("All is well.")
    return "\n".join(lines)


def power_notes(report: Report) -> list[str]:
    """What the table's numbers mean, where they need it."""
    notes = []
    if any(m.at_most_w is not None for m in report.meters):
        notes.append(
            "now: no pulse since the last one, so at most this (t ms after a pulse a meter "
            "draws at most 3,600,000,000 / (t x pulses per kWh) W)"
        )
    if any(m.began_today for m in report.meters):
        notes.append(
            "*: the meter's history began today; its first pulse only starts the count (a "
            "pulse ends an interval of energy, and the first one's began before), so kWh "
            "today is one pulse less than pulses today"
        )
    return notes


def push_line(report: Report) -> str:
    pushes, tz = report.pushes, report.tz
    parts = []
    if pushes.last_sent is None:
        parts.append("none sent yet")
    else:
        sent = pushes.last_sent
        parts.append(f"last sent {show.local(sent.sent_at, tz)} (HTTP {sent.status_code})")
    parts.append(f"{pushes.pending} pending")
    head = pushes.head
    if head is not None and head.last_error:
        parts.append(
            f"last error: {head.last_error}, {head.attempts} attempt(s), next at "
            f"{show.local(head.next_attempt_at, tz)}"
        )
    return "; ".join(parts)


def as_json(report: Report) -> str:
    pushes = report.pushes
    last = pushes.last_sent
    head = pushes.head
    data = {
        "ok": not report.attention,
        "attention": report.attention,
        "at": show.iso(report.at),
        "tz": report.tz.key,
        "meters": [
            {
                "meter": m.number,
                "name": m.name,
                "in_postgresql": m.in_postgres,
                "kwh": None if m.kwh is None else show.kwh(m.kwh, m.pulses_per_kwh),
                "last_power_w": m.last_power_w,
                "at_most_w": m.at_most_w,
                "last_pulse": show.iso(m.last_pulse),
                "last_pulse_age_s": rounded(m.quiet_s),
                "pulses_today": m.pulses_today,
                "kwh_today": None
                if m.kwh_today is None
                else show.kwh(m.kwh_today, m.pulses_per_kwh),
                "history_began_today": m.began_today,
            }
            for m in report.meters
        ],
        "pulses_today_from": report.pulses_today_from,
        "pipeline": {
            "backlog": report.backlog,
            "backlog_change": report.backlog_change,
            "oldest_wait_s": rounded(report.oldest_wait_s),
            "last_commit": show.iso(report.last_commit),
            "last_commit_age_s": rounded(report.last_commit_age_s),
            "committing": report.committing,
            "programs": report.programs,
            "programs_note": report.programs_note or None,
        },
        "deadletters": {
            "count": report.deadletters,
            "last_hour": report.deadletters_recent,
            "latest": [entry.as_json() for entry in report.latest],
        },
        "pushes": {
            "last_sent": None
            if last is None
            else {
                "sent_at": show.iso(last.sent_at),
                "status_code": last.status_code,
                "reading_at": show.iso(last.reading_at),
                "data": last.data_string,
                "what": last.dedup_key,
            },
            "pending": pushes.pending,
            "last_error": None if head is None else head.last_error,
            "next_attempt_at": None if head is None else show.iso(head.next_attempt_at),
            "failing_since": show.iso(pushes.failing_since),
        },
    }
    return json.dumps(data, indent=2)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def run(args: argparse.Namespace, session: Session) -> int:
    report = gather(session)
    print(as_json(report) if args.json else as_text(report))
    return EXIT_ATTENTION if report.attention else EXIT_OK
