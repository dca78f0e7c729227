"""`energy-worker energy`: kWh per meter for today, yesterday and the days before (--days), or
per hour of one day (--hours), with a bar beside each number; --json and --csv for a script or a
spreadsheet.

The numbers are the schema's energy_per_period (what Grafana and the hourly and daily totals
show): exact (PostgreSQL numeric, Decimal here, never a float), counted by pulses only, so a
typed-in reading, which is a correction, is no energy. The period a meter's history begins in
counts from its first pulse on, which itself adds nothing: a pulse ends an interval of energy,
and the first one's began before the history did. That period is marked, and a line says so.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from energy_worker.adapters.sql import reports
from energy_worker.cli import show
from energy_worker.cli.session import EXIT_OK, CliError, Session
from energy_worker.core import totals

BAR_WIDTH = 30
HOUR = timedelta(hours=1)
NONE_IN = {"day": "in these days", "hour": "on this day"}
FIRST_PULSE_MARK = "*"
FIRST_PULSE_NOTE = (
    "* the meter's history begins here: its first pulse only starts the count (a pulse ends "
    "an interval of energy, and the first one's began before), so this is one pulse less "
    "than the pulses seen"
)


@dataclass(frozen=True)
class MeterInfo:
    number: int
    name: str
    pulses_per_kwh: int

    @property
    def title(self) -> str:
        """As the Google Sheet's column: the number first (never a formula in a spreadsheet)."""
        return f"Meter {self.number}: {self.name}"


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    label: str  # "Wed 2024-06-12" or "13:00"
    note: str  # "today", "yesterday", or ""


@dataclass
class Energy:
    unit: str  # "day" or "hour"
    tz: ZoneInfo
    at: datetime  # the database's now
    periods: list[Period]
    meters: list[MeterInfo]
    kwh: dict[tuple[int, int], Decimal]  # (period index, meter) -> kWh; none: no history
    first_pulse: dict[int, int]  # meter -> the period its history begins in, with a pulse


# --- periods ----------------------------------------------------------------------------------


def day_periods(today: date, days: int, tz: ZoneInfo) -> list[Period]:
    """The last `days` local days, oldest first, today last."""
    periods = []
    for back in range(days - 1, -1, -1):
        day = today - back * totals.DAY
        start, end = totals.day_bounds(day, tz)
        note = "today" if back == 0 else "yesterday" if back == 1 else ""
        periods.append(Period(start, end, f"{day:%a} {day.isoformat()}", note))
    return periods


def hour_periods(day: date, since: datetime, until: datetime, tz: ZoneInfo) -> list[Period]:
    """The local hours of a day from `since` (its midnight) that began before `until`: 23 or
    25 on a day the clocks change, whose labels then carry the offset (02:00 +02, 02:00 +01)."""
    with_offset = day_has_offset_change(day, tz)
    periods: list[Period] = []
    start = since
    while start < until or not periods:  # the first hour, at its very first instant too
        end = start + HOUR
        periods.append(Period(start, end, hour_label(start, tz, with_offset), ""))
        start = end
    return periods


def hour_label(start: datetime, tz: ZoneInfo, with_offset: bool) -> str:
    local = start.astimezone(tz)
    label = local.strftime("%H:%M")
    return f"{label} {local.strftime('%z')[:3]}" if with_offset else label


def which_day(text: str, today: date) -> date:
    if text == "today":
        return today
    if text == "yesterday":
        return today - totals.DAY
    return date.fromisoformat(text)  # checked by the parser


# --- gathering --------------------------------------------------------------------------------


def gather(args: argparse.Namespace, session: Session) -> Energy:
    configured = session.meters()
    tz = session.zone()
    con = session.postgres()
    reports.use_zone(con, tz.key)
    now = reports.clock(con)
    today = totals.local_day(now, tz)
    if args.hours is not None:
        unit, day = "hour", which_day(args.hours, today)
        if day > today:
            raise CliError(f"{day} has not begun yet ({tz.key})")
        since, until = totals.day_bounds(day, tz)
        until = min(until, now)  # today: up to now
    else:
        unit, day = "day", today
        since, until = totals.day_bounds(today - (args.days - 1) * totals.DAY, tz)[0], now
    rows = reports.energy_per_period(con, since, until, unit)
    meters = [MeterInfo(n, m.name, m.pulses_per_kwh) for n, m in configured.items()]
    if unit == "day":
        periods = day_periods(today, args.days, tz)
    else:
        periods = hour_periods(day, since, until, tz)
    index = {p.start: i for i, p in enumerate(periods)}
    kwh = {(index[r.start], r.meter_no): r.kwh for r in rows if r.start in index}
    first = {}
    for number, at in reports.first_pulses(con, [m.number for m in meters]).items():
        for i, period in enumerate(periods):
            if period.start <= at < period.end:
                first[number] = i
    return Energy(unit, tz, now, periods, meters, kwh, first)


def day_has_offset_change(day: date, tz: ZoneInfo) -> bool:
    start, end = totals.day_bounds(day, tz)
    return start.astimezone(tz).utcoffset() != (end.astimezone(tz).utcoffset())


# --- showing ----------------------------------------------------------------------------------


def as_text(energy: Energy) -> str:
    tz = energy.tz
    if energy.unit == "day":
        title = f"kWh per day ({tz.key})"
    else:
        day = totals.local_day(energy.periods[0].start, tz) if energy.periods else None
        title = f"kWh per hour of {day:%a %Y-%m-%d} ({tz.key})"
    lines = [f"{title}, counted by pulses (a typed-in reading is no energy)"]
    marked = False
    for meter in energy.meters:
        values = [energy.kwh.get((i, meter.number)) for i in range(len(energy.periods))]
        if all(v is None for v in values):
            lines += ["", meter.title, f"  -  (no history {NONE_IN[energy.unit]})"]
            continue
        most = max((v for v in values if v is not None), default=Decimal(0))
        rows = []
        for i, (period, value) in enumerate(zip(energy.periods, values, strict=True)):
            text = "-" if value is None else show.kwh(value, meter.pulses_per_kwh)
            if energy.first_pulse.get(meter.number) == i:
                text += FIRST_PULSE_MARK
                marked = True
            rows.append([period.label, period.note, text, show.bar(value, most, BAR_WIDTH)])
        known = [v for v in values if v is not None]
        total = show.kwh(sum(known, Decimal(0)), meter.pulses_per_kwh)
        what = f"{len(energy.periods)} days" if energy.unit == "day" else "the day"
        rows.append(["", what, total, ""])
        table = show.table(["", "", "", ""], rows, [False, False, True, False])
        lines += ["", meter.title, *("  " + line for line in table.splitlines()[1:])]
    if marked:
        lines += ["", FIRST_PULSE_NOTE]
    return "\n".join(line.rstrip() for line in lines)


def as_json(energy: Energy) -> str:
    data = {
        "unit": energy.unit,
        "tz": energy.tz.key,
        "at": show.iso(energy.at),
        "counted_by": "pulses",
        "meters": [
            {
                "meter": m.number,
                "name": m.name,
                "pulses_per_kwh": m.pulses_per_kwh,
                "history_begins_in": None
                if m.number not in energy.first_pulse
                else show.iso(energy.periods[energy.first_pulse[m.number]].start),
            }
            for m in energy.meters
        ],
        "periods": [
            {
                "start": show.iso(p.start),
                "end": show.iso(p.end),
                "label": p.label,
                "kwh": {
                    str(m.number): kwh_text(energy.kwh.get((i, m.number)), m) for m in energy.meters
                },
            }
            for i, p in enumerate(energy.periods)
        ],
    }
    return json.dumps(data, indent=2)


def as_csv(energy: Energy) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([energy.unit, "start", *(m.title for m in energy.meters)])
    for i, p in enumerate(energy.periods):
        local = p.start.astimezone(energy.tz)
        label = local.date().isoformat() if energy.unit == "day" else local.strftime("%H:%M")
        values = [kwh_text(energy.kwh.get((i, m.number)), m) or "" for m in energy.meters]
        writer.writerow([label, local.isoformat(timespec="seconds"), *values])
    return out.getvalue().rstrip("\n")


def kwh_text(value: Decimal | None, meter: MeterInfo) -> str | None:
    return None if value is None else show.kwh(value, meter.pulses_per_kwh)


def run(args: argparse.Namespace, session: Session) -> int:
    energy = gather(args, session)
    if args.json:
        print(as_json(energy))
    elif args.csv:
        print(as_csv(energy))
    else:
        print(as_text(energy))
    return EXIT_OK
