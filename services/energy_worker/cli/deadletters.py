"""`energy-worker deadletters`: what the service rejected and why; clear the list, or hand an
entry back once its meter is configured.

The list (energy-worker:deadletter) is newest first; entries are JSON {key, value, reason, at},
written by the router's script (queue.py) or by the processor and pusher (Queues.dead_letter).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from energy_worker.adapters.logs import printable
from energy_worker.adapters.redis_client import as_bytes
from energy_worker.adapters.work_queue import DEADLETTER
from energy_worker.cli import send, show
from energy_worker.cli.session import EXIT_ATTENTION, EXIT_OK, CliError, Session, confirm
from energy_worker.core.keys import Kind, classify, value_problem

# The router's reason for a key whose meter is not in the meter config: the one rejection that
# a change of configuration can undo.
NOT_CONFIGURED = re.compile(r"meter ([1-9][0-9]?) is not configured")
SEND_TIMEOUT = 30.0  # seconds the key may stay in Redis before we give up
TAKE_TIMEOUT = 10.0  # seconds for the router to take the re-queued key
LOOK_BACK = 100  # entries read after a re-queue, looking for its rejection
SHOWN = 200  # characters of a field shown (the router keeps 200 bytes of a value)


@dataclass(frozen=True)
class Entry:
    raw: bytes  # as stored: LREM removes exactly this
    key: str
    value: str
    reason: str
    at_ms: int

    @classmethod
    def parse(cls, raw: bytes | str) -> Entry:
        raw = as_bytes(raw)
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(raw, raw.decode("utf-8", "replace")[:200], "", "not an entry", 0)
        at = data.get("at")
        return cls(
            raw,
            str(data.get("key", "")),
            str(data.get("value", "")),
            str(data.get("reason", "")),
            int(at) if isinstance(at, int | float) else 0,
        )

    @property
    def at(self) -> datetime:
        return show.from_ms(self.at_ms)

    def describe(self, tz: ZoneInfo) -> str:
        """One line for a terminal: every field is Redis-borne text, so escaped."""
        key, value, reason = (
            printable(text, SHOWN) for text in (self.key, self.value, self.reason)
        )
        return f"{show.local(self.at, tz)}  {key} = {value}: {reason}"

    def as_json(self) -> dict[str, str | None]:
        return {
            "key": self.key,
            "value": self.value,
            "reason": self.reason,
            "at": show.iso(self.at) if self.at_ms else None,
        }


def read_entries(r: redis.Redis, start: int, end: int) -> list[Entry]:
    return [Entry.parse(raw) for raw in r.lrange(DEADLETTER, start, end)]


def run(args: argparse.Namespace, session: Session) -> int:
    if args.clear:
        return clear(session, args.yes)
    if args.requeue is not None:
        return requeue(session, args.requeue)
    return listing(session, args.limit, args.json)


def listing(session: Session, limit: int, as_json: bool) -> int:
    r = session.redis()
    pipe = r.pipeline(transaction=True)
    pipe.llen(DEADLETTER)
    pipe.lrange(DEADLETTER, 0, limit - 1)
    count, raws = pipe.execute()
    entries = [Entry.parse(raw) for raw in raws]
    if as_json:
        numbered = [{"number": n, **e.as_json()} for n, e in enumerate(entries, start=1)]
        print(json.dumps({"count": count, "entries": numbered}, indent=2))
        return EXIT_OK
    if not count:
        print("No dead letters: the service has rejected nothing (or the list was cleared).")
        return EXIT_OK
    tz = session.zone()
    print(f"{count} dead letter{'s' if count != 1 else ''}, newest first ({tz.key}):")
    for number, entry in enumerate(entries, start=1):
        print(f"  {number:>3}  {entry.describe(tz)}")
    if count > len(entries):
        print(f"  ... and {count - len(entries)} older (--limit {count} shows them all)")
    return EXIT_OK


def clear(session: Session, yes: bool) -> int:
    r = session.redis()
    count = int(r.llen(DEADLETTER))
    if not count:
        print("No dead letters to delete.")
        return EXIT_OK
    if not confirm(f"Delete all {count} dead letter{'s' if count != 1 else ''}?", yes):
        print("Nothing deleted.")
        return EXIT_ATTENTION
    pipe = r.pipeline(transaction=True)
    pipe.llen(DEADLETTER)  # entries that came since the question go too: the count says so
    pipe.delete(DEADLETTER)
    deleted, _ = pipe.execute()
    print(f"Deleted {deleted} dead letter{'s' if deleted != 1 else ''}.")
    return EXIT_OK


def requeue(session: Session, number: int) -> int:
    r = session.redis()
    raw = r.lindex(DEADLETTER, number - 1)
    if raw is None:
        raise CliError(f"there is no entry {number} (the list holds {r.llen(DEADLETTER)})")
    entry = Entry.parse(raw)
    match = NOT_CONFIGURED.fullmatch(entry.reason)
    if match is None:
        raise CliError(
            f"entry {number} ({printable(entry.key, SHOWN)}) was rejected because "
            f"{printable(entry.reason, SHOWN) or '?'}: only "
            "keys rejected because their meter was not configured can be re-queued"
        )
    meter = int(match.group(1))
    meters = session.meters()
    if meter not in meters:
        raise CliError(
            f"meter {meter} is still not configured ({session.meters_source()}); configure it "
            "and restart the service first"
        )
    kind = classify(entry.key, frozenset(meters))
    if kind.kind not in (Kind.TIMESTAMP, Kind.METERCOUNT) or kind.meter != meter:
        raise CliError(f"entry {number}'s key {entry.key!r} is not a key of meter {meter}")
    problem = value_problem(kind.kind, entry.value)
    if problem is not None:
        raise CliError(f"entry {number}'s value {entry.value!r}: {problem}")

    newest = r.lindex(DEADLETTER, 0)
    sent_ms = time.time() * 1000
    if not send.send(r, entry.key, entry.value, SEND_TIMEOUT):
        raise CliError(
            f"{entry.key} stayed in Redis for {SEND_TIMEOUT:g} s (is the service running?); "
            "not re-queued",
            EXIT_ATTENTION,
        )
    r.lrem(DEADLETTER, 1, entry.raw)  # type: ignore[arg-type]  # redis-py's hint says str
    print(f"Re-queued entry {number}: {entry.key} = {entry.value}")  # checked legal above
    if not send.taken(r, entry.key, entry.value, TAKE_TIMEOUT):
        print(f"The key waits in Redis: the service has not taken it within {TAKE_TIMEOUT:g} s.")
        return EXIT_ATTENTION
    for again in read_entries(r, 0, LOOK_BACK - 1):
        if again.raw == newest:
            break
        if again.key == entry.key and again.at_ms >= sent_ms - 1000:
            print(f"Rejected again: {printable(again.reason, SHOWN)}")
            return EXIT_ATTENTION
    print("The service took it.")
    return EXIT_OK
