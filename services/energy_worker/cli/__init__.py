"""`energy-worker`: the operator's command (installed as a console script; see docs/GUIDE.md).

| module             | what                                                               |
|--------------------|--------------------------------------------------------------------|
| cli/parser.py      | the command line: arguments, help and exit statuses of each        |
| cli/session.py     | settings (make run's found by make_run.py), connections, one-line  |
|                    | errors, confirmation                                               |
| cli/status.py      | `status`: meters, pipeline, dead letters, pushes; health exit code |
| cli/health.py      | the rules `status` judges by (pure)                                |
| cli/energy.py      | `energy`: kWh per meter per day or hour, bars, JSON, CSV           |
| cli/simulate.py    | `simulate`: Arduino-like pulses through the webhook's protocol     |
| cli/deadletters.py | `deadletters`: list, clear, re-queue                               |
| cli/push.py        | `push`: a sheet push now, and its outcome                          |
| cli/set_reading.py | `set-reading`: a typed-in meter reading, confirmed and waited for  |
| cli/send.py        | writing a key as the webhook does (SET NX, again while it exists)  |
| cli/show.py        | ages, local times, kWh, tables (pure)                              |
Their SQL is adapters/sql/reports.py. A subcommand's module, and the libraries it needs, are
imported only when it runs, so the command starts fast on a Raspberry Pi.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from energy_worker.cli import parser as cli_parser
from energy_worker.cli.session import EXIT_ATTENTION, EXIT_TROUBLE, CliError, Session

MODULES = {
    "status": "status",
    "energy": "energy",
    "simulate": "simulate",
    "deadletters": "deadletters",
    "push": "push",
    "set-reading": "set_reading",
}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one subcommand; returns its exit status (the console script exits with it)."""
    args = cli_parser.build().parse_args(argv)
    module = importlib.import_module(f"{__name__}.{MODULES[args.command]}")
    run = cast(Callable[..., int], module.run)
    session = Session(env)
    try:
        return run(args, session)
    except CliError as exc:
        print(f"energy-worker {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `energy-worker status | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ATTENTION
    except Exception as exc:
        failure = session.failure(exc)
        if failure is None:
            raise
        print(f"energy-worker {args.command}: {failure}", file=sys.stderr)
        return EXIT_TROUBLE
    finally:
        session.close()
