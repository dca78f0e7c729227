"""The command line of `energy-worker`: every subcommand's arguments and help.

Only argparse here: `energy-worker --help` and `energy-worker status --help` import nothing
else. What a subcommand does is in its own module (cli/<name>.py), imported when it runs.
"""

from __future__ import annotations

import argparse
import textwrap
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import NoReturn

CENT = Decimal("0.01")
MAX_READING = Decimal("99999.99")  # the metercount key's range: 0 to 9999999 hundredths

DESCRIPTION = """\
energy-worker's everyday commands. Each reads the same settings as the service: PostgreSQL from
POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD (each also as
*_FILE) as the container's entrypoint does, else from the ini that POSTGRES_INI names (default
/etc/postgres.ini); Redis from REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_PASSWORD (or
REDIS_PASSWORD_FILE); the meters from METERS_CONFIG (default /etc/energy-worker/meters.toml,
else services/energy_worker/meters.toml). Under `make run` it finds the run's servers and their
passwords by
itself (var/make-run.json), each one the environment does not name (PostgreSQL: neither
POSTGRES_HOST nor POSTGRES_INI is set; Redis: neither REDIS_HOST nor REDIS_PORT)."""

EXIT_CODES = """\
exit status: 0 done; 1 done, but the outcome needs attention (see each command); 2 could not
do it: a server does not answer, a meter is not configured, an argument is wrong (one line
on stderr says which)."""

STATUS_EPILOG = """\
exit status (usable as a health check):
  0  all is well
  1  something needs attention; each problem is listed at the end:
     - a program of the service is neither RUNNING nor STARTING (supervisord's view;
       checked when ENERGY_WORKER_RUN_DIR names supervisord's folder, as in the container
       and under `make run`), or supervisord does not answer there
     - the processor is not committing: work has waited while its last commit is older
       than three commit intervals (COMMIT_INTERVAL, 5 s: 15 s)
     - the backlog is not being worked off: its oldest pulse has waited over 60 s
     - a meter has been silent for METER_SILENT_AFTER (an hour unless set for the
       service) and 100 times as long as its last power implies (a 2000 W reading at
       1000 pulses/kWh implies a pulse every 1.8 s); Grafana's rule is the same
     - input was rejected in the last hour (see `energy-worker deadletters`)
     - a push to the Google Sheet has been failing for more than a day
     - a configured meter is missing in PostgreSQL (the set-up has not run since)
  2  could not look: a server does not answer, or a configuration error

Last power is the power measured by the latest pulse ("-": it carried none, as the first
pulse after a powerup). Now, while no pulse comes: t ms after its last pulse a meter draws at
most 3,600,000,000 / (t x pulses per kWh) W, or it would have pulsed again; shown once that is
below the last power. Pulses still on their way to PostgreSQL are taken into account.
kWh today is counted by pulses (a typed-in reading is no energy; see energy-worker energy).
The first pulse of a meter's history only starts the count (it ends an interval of energy
that began before the history did): that day, kWh today is one pulse less than the pulses,
marked with *."""

SIMULATE_EPILOG = """\
Each meter behaves like the Arduino: a pulse every 3,600,000,000 / (W x pulses per kWh) ms,
time-stamped with a millis() clock, kept in a buffer of 5, and sent as the webhook does (SET
channel:<n>:timestamp <millis> NX, tried again every few ms while the key is still there). A
pulse that meets a full buffer is lost, and reported.

WARNING: simulated pulses count on the real meters, exactly like real ones (60 s at 2000 W
add about 0.033 kWh to a 1000 pulses/kWh meter). Simulate before you type in the readings, or type
them in again after (energy-worker set-reading).

exit status: 0 every pulse delivered; 1 a pulse was lost or could not be delivered; 2 an
unknown meter, a wrong argument, or Redis does not answer."""

DEADLETTERS_EPILOG = """\
The service keeps every key it rejected (unknown keys, unconfigured meters, values out of
range), newest first, in the Redis list energy-worker:deadletter (at most 1000).

--requeue N hands entry N back exactly as the webhook wrote it (SET key value NX), if it was
rejected only because its meter was not configured, and that meter is configured now; the
entry is removed once the key is back.

exit status: 0 done; 1 not done (not confirmed, rejected again, timed out); 2 an entry that
cannot be re-queued, or Redis does not answer."""

PUSH_EPILOG = """\
Does what the webhook's pushtogoogle key does (SET pushtogoogle true NX), then waits for the
push's outcome in the outbox (push_outbox). A failed push is retried by the service after
30 s, doubling up to 15 min, whatever this command reports.

exit status: 0 the sheet answered 2xx; 1 the push failed, timed out, or the service ignores
it (GOOGLE_WEBHOOK_URL is not set for it); 2 a server does not answer."""

SET_READING_EPILOG = """\
Does what the webhook's channel:<n>:metercount key does: the reading x 100, as digits. It shows
the current reading and what changes, asks before it changes anything, then waits until the
service has stored it. A typed-in reading is a correction, not consumption: the hourly and
daily energy and the graphs count pulses only.

exit status: 0 stored; 1 not confirmed, or not stored in time; 2 an unknown meter, a reading
out of range, or a server does not answer."""


ENERGY_EPILOG = """\
The energy is counted by pulses, exactly (N pulses of a 1000 pulses/kWh meter are N/1000 kWh),
as Grafana and the hourly and daily totals count it: a typed-in reading (set-reading) is a
correction, not energy. Today and the current hour count up to now. "-": the meter has no
history yet then. The period in which a meter's history begins is marked with *: its first
pulse only starts the count, since a pulse ends an interval of energy that began before it.
Bars are scaled to each meter's largest value. Days and hours are local (TZ).

exit status: 0 shown; 2 a wrong argument, or PostgreSQL does not answer."""

MAX_DAYS = 366


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 86400")
    return value


def meter_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 99:
        raise argparse.ArgumentTypeError(f"{text!r} is not a meter number (1 to 99)")
    return int(text)


def meter_list(text: str) -> list[int]:
    numbers = [meter_number(part.strip()) for part in text.split(",")]
    if len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"{text!r} names a meter twice")
    return numbers


def power_list(text: str) -> list[int]:
    values = []
    for part in text.split(","):
        digits = part.strip()
        if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 10_000_000:
            raise argparse.ArgumentTypeError(f"{digits!r} is not a power in W (1 to 10000000)")
        values.append(int(digits))
    return values


def reading(text: str) -> Decimal:
    """A reading in kWh: 0 to 99999.99, at most two decimals (the metercount key's range)."""
    problem = f"{text!r} is not a reading in kWh from 0 to 99999.99 with at most 2 decimals"
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(problem) from None
    if not value.is_finite() or not 0 <= value <= MAX_READING or value != value.quantize(CENT):
        raise argparse.ArgumentTypeError(problem)
    return value.quantize(CENT)


def day_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (1 to {MAX_DAYS})")
    return int(text)


def day_name(text: str) -> str:
    """today, yesterday, or a date YYYY-MM-DD."""
    if text in ("today", "yesterday"):
        return text
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a day: today, yesterday or YYYY-MM-DD")


def entry_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an entry number (1, 2, ...)")
    return int(text)


class Parser(argparse.ArgumentParser):
    """A wrong argument is one line on stderr and exit status 2, as every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build() -> argparse.ArgumentParser:
    parser = Parser(
        prog="energy-worker",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=textwrap.fill(summary, 92),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    status = command(
        "status",
        "Each meter's reading, last power and its bound now, last pulse, pulses and kWh "
        "today; the pipeline, dead letters and pushes; a non-zero exit status when something "
        "needs attention.",
        STATUS_EPILOG,
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    energy = command(
        "energy",
        "kWh per meter for today, yesterday and the days before, or per hour of one day, "
        "with a bar chart; --json or --csv for a script or a spreadsheet.",
        ENERGY_EPILOG,
    )
    period = energy.add_mutually_exclusive_group()
    period.add_argument(
        "--days",
        type=day_count,
        default=7,
        metavar="N",
        help="the last N days, today included (default 7)",
    )
    period.add_argument(
        "--hours",
        type=day_name,
        nargs="?",
        const="today",
        default=None,
        metavar="DAY",
        help="per hour of one day: today (the default), yesterday, or YYYY-MM-DD",
    )
    output = energy.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object, kWh as text")
    output.add_argument(
        "--csv", action="store_true", help="CSV: a row per period, a column per meter"
    )

    simulate = command(
        "simulate",
        "Feed test pulses into the running service exactly as the webhook does.",
        SIMULATE_EPILOG,
    )
    simulate.add_argument(
        "--meters",
        type=meter_list,
        default=[1],
        metavar="N[,N...]",
        help="the meters to pulse (default: 1)",
    )
    simulate.add_argument(
        "--power",
        type=power_list,
        default=[1000],
        metavar="W[,W...]",
        help="power in W, one for all meters or one per meter (default: 1000)",
    )
    simulate.add_argument(
        "--duration",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long pulses are made (default: 10); delivering the last ones takes a moment",
    )
    simulate.add_argument(
        "--powerup",
        type=float,
        nargs="?",
        const=0.0,
        default=None,
        metavar="SECONDS",
        help="the Arduino restarts: send powerup first, or this many seconds into the run; its "
        "millis() clock starts again at 0 and pulses in its buffer are lost",
    )
    simulate.add_argument(
        "--repeat",
        type=int,
        default=0,
        metavar="N",
        help="send every N-th pulse twice, as a flaky Arduino would (counted once)",
    )

    deadletters = command(
        "deadletters",
        "What the service rejected, and why (newest first); clear them, or hand one back.",
        DEADLETTERS_EPILOG,
    )
    deadletters.add_argument(
        "--limit", type=entry_number, default=20, metavar="N", help="show N entries (default 20)"
    )
    deadletters.add_argument("--json", action="store_true", help="the entries as JSON")
    action = deadletters.add_mutually_exclusive_group()
    action.add_argument("--clear", action="store_true", help="delete every entry")
    action.add_argument(
        "--requeue",
        type=entry_number,
        metavar="N",
        help="hand entry N (the number shown in front of it) back to the service",
    )
    deadletters.add_argument("--yes", action="store_true", help="do not ask before --clear")

    push = command(
        "push",
        "Push every meter's reading to the Google Sheet now, and wait for the outcome.",
        PUSH_EPILOG,
    )
    push.add_argument(
        "--timeout",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the outcome (default 60)",
    )

    set_reading = command(
        "set-reading",
        "Type in a meter's reading (what its display shows).",
        SET_READING_EPILOG,
    )
    set_reading.add_argument("meter", type=meter_number, metavar="METER", help="meter number")
    set_reading.add_argument(
        "kwh", type=reading, metavar="KWH", help="the reading in kWh, e.g. 279.97"
    )
    set_reading.add_argument("--yes", action="store_true", help="do not ask before setting it")
    set_reading.add_argument(
        "--timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait until it is stored (default 30)",
    )
    return parser
