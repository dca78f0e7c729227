"""`energy-worker set-reading METER KWH`: a typed-in reading, as the webhook's
`channel:<n>:metercount` key carries one (the reading x 100, as digits), confirmed first and
waited for until the processor has stored it.

Stored means: the typed-in row the processor writes for it (consumption.typed_in, after every
row that existed before the key was written) is committed; meter_status follows in the same
transaction. Pulses arriving meanwhile may already have moved the reading on.
"""

from __future__ import annotations

import argparse
import time

from energy_worker.adapters.logs import printable
from energy_worker.adapters.sql import reports
from energy_worker.adapters.work_queue import DEADLETTER
from energy_worker.cli import send, show
from energy_worker.cli.deadletters import Entry
from energy_worker.cli.session import EXIT_ATTENTION, EXIT_OK, CliError, Session, confirm
from energy_worker.core import arithmetic

POLL_S = 0.05


def run(args: argparse.Namespace, session: Session) -> int:
    meter = session.meter(args.meter)
    r = session.redis()
    con = session.postgres()
    value = int(args.kwh * 100)
    ppk = meter.pulses_per_kwh
    counts, exact = arithmetic.counts_for_reading(value, meter.pulses_per_kwh)
    new = arithmetic.kwh(counts, meter.pulses_per_kwh)
    current = reports.reading(con, meter.number)
    if current is None:
        raise CliError(
            f"meter {meter.number} is not in PostgreSQL yet (the set-up has not run since it "
            "was configured: restart the service)"
        )
    old, old_counts = current
    name = f"Meter {meter.number} ({meter.name})"
    print(f"{name} reads {show.kwh(old, ppk)} kWh ({old_counts} pulses).")
    print(
        f"It will read {show.kwh(new, ppk)} kWh ({counts} pulses at {meter.pulses_per_kwh} "
        f"pulses/kWh), {'+' if new >= old else ''}{show.kwh(new - old, ppk)} kWh."
    )
    if not exact:
        print(f"(The nearest whole pulse: {args.kwh} kWh cannot be counted exactly.)")
    print("A typed-in reading is a correction: the hourly and daily energy do not count it.")
    if not confirm("Set it?", args.yes):
        print("Nothing changed.")
        return EXIT_ATTENTION

    key = f"channel:{meter.number}:metercount"
    before = reports.last_index(con)
    newest = r.lindex(DEADLETTER, 0)
    deadline = time.monotonic() + args.timeout
    if not send.send(r, key, str(value), args.timeout):
        raise CliError(
            f"{key} stayed in Redis for {args.timeout:g} s (is the service running?); "
            "nothing changed",
            EXIT_ATTENTION,
        )
    while True:
        stored = reports.typed_in_after(con, meter.number, before)
        if stored is not None:
            now = reports.reading(con, meter.number)
            shown = show.kwh(now[0], ppk) if now else "?"
            print(f"Stored: meter {meter.number} reads {shown} kWh.")
            return EXIT_OK
        rejected = rejection(r.lindex(DEADLETTER, 0), newest, key)
        if rejected:
            raise CliError(f"the service rejected {key}: {rejected}", EXIT_ATTENTION)
        if time.monotonic() > deadline:
            where = "waits in Redis" if r.exists(key) else "waits for the processor"
            raise CliError(
                f"not stored within {args.timeout:g} s: the reading {where} and will be stored "
                "when the service gets to it",
                EXIT_ATTENTION,
            )
        time.sleep(POLL_S)


def rejection(head: bytes | str | None, newest: bytes | str | None, key: str) -> str | None:
    """The reason, if the newest dead letter is new and is our key's."""
    if head is None or head == newest:
        return None
    entry = Entry.parse(head)
    return printable(entry.reason) if entry.key == key else None
