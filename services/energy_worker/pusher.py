"""The pusher (issue 4): hourly and daily totals, and the Google Sheet push. Nothing is lost.

`python -m energy_worker.pusher`. Its job, as the loop does it:

1. Requests. `pushtogoogle` items arrive on the Redis list energy-worker:push. Each is moved to
   energy-worker:push-processing (BLMOVE), recorded in the PostgreSQL outbox with the current
   readings, and only then removed; a crash in between leaves it to be recorded at the next
   start, and its key (epoch:seq) keeps it from being recorded twice.
2. Totals, every hour. A meter's reading at a boundary is read from the stored history (its
   latest consumption row at or before the boundary), never from the state at the moment the
   job runs. Each pass computes the hours and days closed since the last one (all of those
   missed while the pusher was down), and recomputes only those whose history may have
   changed since: from the earliest row inserted since (index above the last pass's; a
   backlog processed late lands in the past), and from where each row stood that the
   processor could still move at the last pass. Only a deadband run's second row is ever
   moved, and only within its quarter hour (history.py), so such a row can change readings
   from its own position on; once every pulse stamped before its quarter hour's end is
   committed (nothing older waits in Redis, and the quarter hour ended ROUTE_MARGIN ago) it
   can no longer move. A meter that is quiet, or whose run started long ago, costs nothing.
3. The daily push. At PUSH_TIME (default 00:02) local time in TZ, the readings at the midnight
   that ended each due day are recorded in the outbox, oldest first, once the processor has
   caught up past that midnight (no item older than it waiting in Redis), or at the latest
   HISTORY_WAIT after the push time.
4. Sending. The outbox is sent oldest first, one request at a time with a bounded timeout; a
   failure is retried with backoff and holds back everything newer, so a webhook that is down
   for days gets every missed day in order. A push answered 2xx is marked sent with its status
   and never sent again.

Only one pusher works on a database: each connection first takes a session-level advisory
lock; a second pusher logs once that another one holds it, and retries with backoff (it takes
over when the first one is gone). It touches neither Redis's requests nor the outbox meanwhile.

The schedule package raises the hourly and daily jobs; because it runs on the system's local
clock (UTC in a container without zone files), the loop also wakes at the instants it computes
in TZ itself. Both only mark work as due, and the work is idempotent. Idle, the process blocks in
BLMOVE until the next due instant. Time comes from an injectable clock, so tests never wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import pg8000.native
import redis
import schedule

from . import config, db, history, lifeline, logs, store, totals
from .google import Webhook, data_string
from .keys import OWN_PREFIX
from .logs import DebugSwitch, shown
from .queue import PROCESSING, PUSH, WORK, Queues
from .redisconn import connect_redis
from .retry import Outage

PUSH_PROCESSING = OWN_PREFIX + "push-processing"
MAX_BLOCK = 10.0  # seconds in one BLMOVE at most: a dead connection or supervisor is noticed
SETTLE = timedelta(seconds=5)  # after an hour ends, before its totals: the last pulses land
RECHECK = timedelta(seconds=30)  # while the daily push waits for the processor to catch up
CHUNK_HOURS = 24 * 7  # hours per statement in a long backfill
# A pulse reaches Redis within this long of the router stamping it (same host: milliseconds).
ROUTE_MARGIN = timedelta(seconds=60)
SLOT = timedelta(milliseconds=history.SLOT_MS)
RETRY_FIRST = 30.0  # seconds before the first retry of a failed push; doubles up to RETRY_MAX
RETRY_MAX = 900.0

Clock = Callable[[], datetime]


class Stopped(Exception):
    """A stop item: leave the loop; nothing is half done that a restart
    would not finish."""


class AnotherPusher(Exception):
    """Another pusher holds the lock on this database."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Settings:
    webhook_url: str | None
    push_time: time = totals.DEFAULT_PUSH_TIME
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo(totals.DEFAULT_TZ))
    timeout: float = 20.0  # seconds per push request
    history_wait: timedelta = timedelta(hours=2)
    retry_first: float = RETRY_FIRST
    retry_max: float = RETRY_MAX

    def __repr__(self) -> str:  # the URL is a secret
        return f"Settings(push_time={self.push_time}, tz={self.tz.key}, timeout={self.timeout})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """GOOGLE_WEBHOOK_URL, PUSH_TIME (HH:MM), TZ, PUSH_TIMEOUT and PUSH_HISTORY_WAIT
        (seconds). Raises ConfigError naming the variable."""
        url = (env.get("GOOGLE_WEBHOOK_URL") or "").strip() or None
        try:
            push_time = totals.parse_clock(env.get("PUSH_TIME"))
        except ValueError as exc:
            raise config.ConfigError(f"PUSH_TIME: {exc}") from None
        try:
            tz = totals.zone(env.get("TZ"))
        except ValueError as exc:
            raise config.ConfigError(str(exc)) from None
        return cls(
            webhook_url=url,
            push_time=push_time,
            tz=tz,
            timeout=_seconds(env, "PUSH_TIMEOUT", 20.0, 1.0, 300.0),
            history_wait=timedelta(seconds=_seconds(env, "PUSH_HISTORY_WAIT", 7200, 0, 86400)),
        )


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise config.ConfigError(f"{name} must be a number of seconds from {low:g} to {high:g}")
    return value


class Pusher:
    def __init__(
        self,
        connect: Callable[[], pg8000.native.Connection],
        r: redis.Redis,
        settings: Settings,
        log: logging.Logger,
        clock: Clock = utc_now,
    ) -> None:
        self.connect = connect
        self.r = r
        self.settings = settings
        self.tz = settings.tz
        self.log = log
        self.clock = clock
        self.webhook = (
            Webhook(settings.webhook_url, settings.timeout) if settings.webhook_url else None
        )
        self.con: pg8000.native.Connection | None = None
        self.debug = DebugSwitch(log)
        self.postgres = Outage("PostgreSQL", log)
        self.redis = Outage("Redis", log)
        self.prepared = False
        # What is due. The scheduler's jobs and the TZ-computed instants only set these.
        self.totals_due = True
        self.pushes_due = True
        self.next_totals_at: datetime | None = None
        self.next_push_check: datetime | None = None
        self.next_retry: datetime | None = None
        self.waiting_logged_for: object = None
        self.failing = False
        self.scheduler = schedule.Scheduler()
        self.scheduler.every().hour.at("00:05").do(self._mark_totals_due)
        self.scheduler.every().day.at(settings.push_time.strftime("%H:%M:%S")).do(
            self._mark_pushes_due
        )

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        if self.webhook is None:
            self.log.warning(
                "GOOGLE_WEBHOOK_URL is not set: totals only, no pushes to the Google Sheet"
            )
        else:
            self.log.info(
                "pushing to %s daily at %s %s; totals hourly",
                self.webhook.shown,
                self.settings.push_time.strftime("%H:%M"),
                self.tz.key,
            )
        while True:
            lifeline.check(self.log)
            try:
                self.step()
            except redis.RedisError as exc:
                self.prepared = False  # a request may be left in push-processing: recover it
                self.redis.failed(exc)
            except (*db.UNAVAILABLE, AnotherPusher) as exc:
                self.prepared = False
                self.drop_connection()
                self.postgres.failed(exc)  # logs once, then waits with backoff
            else:
                self.redis.succeeded()
                self.postgres.succeeded()

    def step(self, block: bool = True) -> None:
        """One pass: do what is due, then wait for a request until the next thing is due
        (block=False: take a waiting request, if any, without waiting)."""
        self.debug.refresh(self.r)
        if not self.prepared:
            self.prepare()
        self.scheduler.run_pending()
        self.run_due()
        self.send_due()
        self.take_request(self.wake_in() if block else 0.0)

    def prepare(self) -> None:
        """At start: adopt the zone (a new one recomputes every total) and record requests a
        previous run took but did not record."""
        con = self.db()
        state = store.load_state(con)
        if state.tz != self.tz.key:
            first_push_day = totals.local_day(self.clock(), self.tz)
            store.start_state(con, self.tz.key, first_push_day)
            if state.tz is not None:
                self.log.warning(
                    "time zone changed from %s to %s: recomputing every total",
                    state.tz,
                    self.tz.key,
                )
        for raw in self.r.lrange(PUSH_PROCESSING, 0, -1):
            self.handle_item(raw)
        self.prepared = True

    def run_due(self) -> None:
        now = self.clock()
        if self.next_totals_at is None or now >= self.next_totals_at:
            self.totals_due = True
        if self.next_push_check is None or now >= self.next_push_check:
            self.pushes_due = True
        if self.totals_due:
            self.update_totals()
            self.totals_due = False
            self.next_totals_at = totals.next_hour_end(now, self.tz) + SETTLE
        if self.pushes_due:
            self.next_push_check = self.record_due_pushes()
            self.pushes_due = False

    def wake_in(self) -> float:
        """Seconds until something is due (at most MAX_BLOCK)."""
        now = self.clock()
        waits = [MAX_BLOCK]
        idle = self.scheduler.idle_seconds
        if idle is not None:
            waits.append(idle)
        for instant in (self.next_totals_at, self.next_push_check, self.next_retry):
            if instant is not None:
                waits.append((instant - now).total_seconds())
        return max(0.0, min(waits))

    def _mark_totals_due(self) -> None:
        self.totals_due = True

    def _mark_pushes_due(self) -> None:
        self.pushes_due = True

    # --- connections ----------------------------------------------------------------------------

    def db(self) -> pg8000.native.Connection:
        """The connection, holding the pusher lock (raises AnotherPusher if it is taken)."""
        if self.con is None:
            con = self.connect()
            try:
                locked = store.try_lock(con, "pusher")
            except BaseException:
                db.close_quietly(con)
                raise
            if not locked:
                db.close_quietly(con)
                raise AnotherPusher("another pusher is working on this database")
            self.con = con
        return self.con

    def drop_connection(self) -> None:
        db.close_quietly(self.con)
        self.con = None

    def close(self) -> None:
        self.drop_connection()
        if self.webhook is not None:
            self.webhook.close()

    # --- requests from Redis --------------------------------------------------------------------

    def take_request(self, timeout: float) -> bool:
        """Wait up to timeout seconds for a push request and record it; False if none came."""
        if timeout > 0:
            raw = self.r.blmove(PUSH, PUSH_PROCESSING, timeout, "LEFT", "RIGHT")
        else:
            raw = self.r.lmove(PUSH, PUSH_PROCESSING, "LEFT", "RIGHT")
        if raw is None:
            return False
        self.handle_item(raw)
        return True

    def handle_item(self, raw: bytes) -> None:
        """Record one item of push-processing, then remove it from there."""
        try:
            item: dict[str, Any] = json.loads(raw)
            kind = item["k"]
        except (ValueError, TypeError, KeyError):
            self.log.warning("unreadable push item %s; kept in the dead-letter list", shown(raw))
            Queues(self.r).dead_letter(PUSH_PROCESSING, repr(raw)[:200], "unreadable push item")
            self.r.lrem(PUSH_PROCESSING, 1, raw)
            return
        if kind == "x":
            self.r.lrem(PUSH_PROCESSING, 1, raw)
            raise Stopped("stop item")
        if kind != "g":
            self.log.warning(
                "push item of unknown kind %s; kept in the dead-letter list", shown(raw)
            )
            Queues(self.r).dead_letter(PUSH_PROCESSING, repr(raw)[:200], "unknown push item kind")
        elif self.webhook is None:
            self.log.info("pushtogoogle ignored: GOOGLE_WEBHOOK_URL is not set")
        else:
            now = self.clock()
            con = self.db()
            readings = store.current_readings(con)
            key = f"request:{item.get('e')}:{item.get('s')}"
            if store.record_push(con, key, now, data_string([kwh for _no, kwh in readings]), now):
                self.log.info("pushtogoogle: current readings queued for the Google Sheet")
            self.next_retry = None  # look at the outbox again now
        self.r.lrem(PUSH_PROCESSING, 1, raw)

    # --- totals ---------------------------------------------------------------------------------

    def update_totals(self) -> None:
        """Compute the hours and days closed since the last pass, and recompute those whose
        history may have changed since (module doc)."""
        now = self.clock()
        settled = self.settled_until(now)  # before reading PostgreSQL: see settled_until
        con = self.db()
        state = store.load_state(con)
        new_from, max_index, movable = store.history_changes(con, state.seen_index)
        # Rows that may still move before the next pass; a row at a quarter-hour boundary
        # itself also changes the hour that ends there, hence the microsecond before it.
        open_rows = [t for t in movable if _slot_end(t) >= settled]  # its end included
        running_from = min(open_rows) - timedelta(microseconds=1) if open_rows else None
        until = totals.hour_floor(now, self.tz)
        done_until = state.totals_until
        if done_until is None:
            since = store.first_history(con)
        else:
            since = min(t for t in (done_until, state.recompute_from, new_from) if t)
        if since is not None:
            since = min(since, until)
            hours = [
                (s, e, totals.local_day(s, self.tz))
                for s, e in totals.closed_hours(since, now, self.tz)
            ]
            days = [
                (d, *totals.day_bounds(d, self.tz)) for d in totals.closed_days(since, now, self.tz)
            ]
            # Those that ended by done_until were computed before: a write there corrects one.
            old_hours = [h for h in hours if done_until is not None and h[1] <= done_until]
            old_days = [d for d in days if done_until is not None and d[2] <= done_until]

            def write_hours(part: list[tuple[datetime, datetime, date]]) -> int:
                return store.upsert_hours(con, part, now)

            def write_days(part: list[tuple[date, datetime, datetime]]) -> int:
                return store.upsert_days(con, part, now)

            corrected = _in_chunks(write_hours, old_hours, CHUNK_HOURS) + _in_chunks(
                write_days, old_days, CHUNK_HOURS // 24
            )
            _in_chunks(write_hours, hours[len(old_hours) :], CHUNK_HOURS)
            _in_chunks(write_days, days[len(old_days) :], CHUNK_HOURS // 24)
            if corrected:
                self.log.info(
                    "history changed back to %s: %d total(s) corrected (%d hour(s) and "
                    "%d day(s) recomputed)",
                    since.astimezone(self.tz).isoformat(timespec="seconds"),
                    corrected,
                    len(old_hours),
                    len(old_days),
                )
            if len(hours) - len(old_hours) > 1:
                self.log.info(
                    "totals filled in for %d hour(s) and %d day(s)",
                    len(hours) - len(old_hours),
                    len(days) - len(old_days),
                )
            self.log.debug(
                "totals: %d hour(s) and %d day(s) computed from %s",
                len(hours),
                len(days),
                since.astimezone(self.tz).isoformat(timespec="seconds"),
            )
        store.save_totals_state(con, max_index, running_from, until)

    def settled_until(self, now: datetime) -> datetime:
        """An instant before which every pulse is committed to PostgreSQL: the oldest work item
        still waiting in Redis, at most now - ROUTE_MARGIN. Read before the history: an item
        the processor commits in between is then already gone from Redis, and in the history."""
        oldest = self.oldest_waiting()
        settled = now - ROUTE_MARGIN
        return settled if oldest is None else min(settled, oldest)

    def oldest_waiting(self) -> datetime | None:
        """When the oldest work item still waiting for the processor was stamped (None: none
        waits). Both lists in one transaction, so an item moving between them is seen once."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lindex(PROCESSING, 0)  # processing holds the older items
        pipe.lindex(WORK, 0)
        oldest = None
        for raw in pipe.execute():
            if raw is None:
                continue
            try:
                at = store.at_time(int(json.loads(raw)["at"]))
            except (ValueError, TypeError, KeyError, OverflowError):
                continue
            oldest = at if oldest is None else min(oldest, at)
        return oldest

    # --- the daily push -------------------------------------------------------------------------

    def record_due_pushes(self) -> datetime:
        """Record the readings of every due day in the outbox, oldest first; returns when to
        look again."""
        now = self.clock()
        con = self.db()
        state = store.load_state(con)
        next_day = state.next_push_day or totals.local_day(now, self.tz)
        for day in totals.due_push_days(next_day, now, self.settings.push_time, self.tz):
            midnight = totals.day_start(day + totals.DAY, self.tz)
            if self.webhook is not None and not self.history_complete(midnight):
                due = totals.push_due_at(day, self.settings.push_time, self.tz)
                if now < due + self.settings.history_wait:
                    if self.waiting_logged_for != day:
                        self.waiting_logged_for = day
                        self.log.info(
                            "push of %s waits: the processor has not caught up past midnight", day
                        )
                    return now + RECHECK
                self.log.warning(
                    "push of %s: the processor is still behind midnight; sending what is stored",
                    day,
                )
            con.run("START TRANSACTION")
            try:
                if self.webhook is not None:
                    readings = [kwh for _no, kwh in store.readings_at(con, midnight)]
                    store.record_push(
                        con, f"day:{day.isoformat()}", midnight, data_string(readings), now
                    )
                store.set_next_push_day(con, day + totals.DAY)
                con.run("COMMIT")
            except BaseException:
                _rollback(con)
                raise
            if self.webhook is not None:
                self.log.info("readings at the end of %s queued for the Google Sheet", day)
                self.next_retry = None
            next_day = day + totals.DAY
        return totals.push_due_at(next_day, self.settings.push_time, self.tz)

    def history_complete(self, boundary: datetime) -> bool:
        """True when no work item taken before `boundary` still waits for the processor."""
        oldest = self.oldest_waiting()
        return oldest is None or oldest > boundary

    # --- sending --------------------------------------------------------------------------------

    def send_due(self) -> None:
        """Send the outbox oldest first until it is empty or a push fails."""
        if self.webhook is None:
            return
        con = self.db()
        while True:
            pending = store.next_pending(con)
            now = self.clock()
            if pending is None or pending.next_attempt_at > now:
                self.next_retry = pending.next_attempt_at if pending else None
                return
            answer = self.webhook.send(pending.data_string)
            done = self.clock()
            what = _describe(pending, self.tz)
            if answer.ok:
                assert answer.status is not None
                store.mark_sent(con, pending.id, answer.status, done)
                if self.failing:
                    self.log.warning("the Google Sheet webhook answers again")
                self.failing = False
                self.log.info("pushed %s to the Google Sheet: %s", what, answer.describe())
                continue
            delay = min(
                self.settings.retry_first * 2 ** min(pending.attempts, 30), self.settings.retry_max
            )
            retry_at = done + timedelta(seconds=delay)
            store.mark_failed(con, pending.id, answer.status, answer.describe(), retry_at)
            self.failing = True
            self.log.warning(
                "push of %s to %s failed (%s, attempt %d); next attempt in %.0f s",
                what,
                self.webhook.shown,
                answer.describe(),
                pending.attempts + 1,
                delay,
            )
            self.next_retry = retry_at
            return


def _in_chunks(write: Callable[[list[Any]], int], rows: list[Any], size: int) -> int:
    """write(rows) a chunk at a time; returns the sum of what it returns."""
    return sum(write(rows[i : i + size]) for i in range(0, len(rows), size))


def _slot_end(at: datetime) -> datetime:
    """The end of the quarter hour (history.slot) that contains `at`: a row exactly at a
    boundary belongs to the quarter hour that ends there."""
    at_ms = (at - store.EPOCH_START) // timedelta(milliseconds=1)
    return store.EPOCH_START + (history.slot(at_ms) + 1) * SLOT


def _describe(pending: store.PendingPush, tz: ZoneInfo) -> str:
    if pending.dedup_key.startswith("day:"):
        return f"the readings at the end of {pending.dedup_key[4:]}"
    local = pending.reading_at.astimezone(tz).isoformat(timespec="seconds")
    return f"the readings requested at {local}"


def _rollback(con: pg8000.native.Connection) -> None:
    with contextlib.suppress(db.UNAVAILABLE):
        con.run("ROLLBACK")


def main() -> int:
    log = logs.setup("pusher")
    try:
        settings = Settings.from_env(os.environ)
        pg = config.postgres_settings()
        rs = config.redis_settings()
        if settings.webhook_url:
            Webhook(settings.webhook_url)  # validates it, without ever showing it
    except config.ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except ValueError as exc:
        log.error("configuration error: %s", exc)
        return 2

    def stop(signum: int, _frame: FrameType | None) -> None:
        # SystemExit, not an Exception: no `except Exception` on the way (logging's own
        # included) can swallow it. Whatever it interrupts is transactional.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pusher = Pusher(
        lambda: db.connect(pg, "energy-worker pusher"),
        connect_redis(rs, blocking_timeout=MAX_BLOCK),
        settings,
        log,
    )
    try:
        pusher.run()
    except Stopped:
        log.info("stop item: exiting")
        return 0  # 0 only after a stop item (docs/CONTRACT.md)
    except SystemExit as exc:
        log.info("stopped by signal")  # exits as a killed process would: 143, 130
        return int(exc.code or 1)
    finally:
        pusher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
