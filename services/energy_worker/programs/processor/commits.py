"""The processor's commit path: a batch applied to the meters (ledger.plan_batch) and written in
one transaction with its last (epoch, seq), then acknowledged in Redis. A statement PostgreSQL
refuses for the data it carries is not retried: a binary search of rolled-back tries finds the
item that causes it, the items before it are committed and that one kept as a dead letter."""

from __future__ import annotations

import contextlib
import logging

import redis

from energy_worker.adapters import postgres
from energy_worker.adapters.outage import describe_error
from energy_worker.adapters.sql import ingest as store
from energy_worker.core import ledger, status
from energy_worker.core.domain import Item
from energy_worker.programs.processor.report import report
from energy_worker.programs.processor.state import State

log = logging.getLogger("energy_worker.programs.processor")


class Commits(State):
    """Commit a batch taken from Redis, isolating the item PostgreSQL refuses, then drop it
    from Redis."""

    def process(
        self, raw: list[bytes], items: list[Item], positions: list[int], backlog: int
    ) -> int | None:
        """Commit `items` (the head of `raw`), then drop them from Redis; returns how many
        entries of `raw` that took off, or None when an outage stopped it (what was committed
        comes back and is skipped). self.stopped says whether they ended with a stop."""
        self.stopped = False
        committed = 0  # of `items`
        covered = 0  # entries of `raw`
        if not items:  # unreadable entries at the head: dead letters, nothing to commit
            covered = self.entries_through(raw, positions, 0, False)
            try:
                self.report(ledger.Plan(), raw, positions, 0, covered)
            except redis.RedisError as exc:
                self.redis_outage.failed(exc)
                return None
        while committed < len(items) and not self.stopped:
            try:
                plan, end = self.commit_isolating(raw, items, positions, committed, backlog)
            except postgres.ERRORS as exc:
                if covered:
                    self.acknowledge(covered)  # what was committed before it
                self.lost_database(exc, backlog - covered)
                return None
            self.records.update(plan.records)
            self.done = plan.done
            self.stopped = plan.stop
            try:
                self.report(plan, raw, positions, covered, end)
            except redis.RedisError as exc:  # not acknowledged: it comes back, skipped as done
                self.redis_outage.failed(exc)
                return None
            committed = min(self.items_through(positions, end), len(items))
            covered = end
        if not self.acknowledge(covered):
            return None
        if self.stopped:
            log.info(
                "stop: everything before it is committed (item %s); exiting",
                self.done_last or "-",
            )
        return covered

    def decode(self, raw: list[bytes]) -> tuple[list[Item], list[int]]:
        """The batch's items, and the position in `raw` of each (an unreadable entry has
        none: it is set aside as a dead letter when its turn comes, with its reason)."""
        items, positions = [], []
        self.unreadable = {}
        for position, data in enumerate(raw):
            try:
                items.append(Item.decode(data))
                positions.append(position)
            except ValueError as exc:
                self.unreadable[position] = str(exc)
        return items, positions

    @staticmethod
    def items_through(positions: list[int], end: int) -> int:
        """How many decoded items lie in the first `end` entries of the batch."""
        return sum(1 for position in positions if position < end)

    @staticmethod
    def entries_through(raw: list[bytes], positions: list[int], count: int, stop: bool) -> int:
        """The entries of `raw` a commit of the first `count` decoded items takes off Redis:
        through the last one after a stop (what follows a stop stays for the next start), else
        up to the next decoded item (unreadable entries between them go as dead letters), or
        all of them."""
        if stop:
            return positions[count - 1] + 1
        if count < len(positions):
            return positions[count]
        return len(raw)

    def commit_isolating(
        self,
        raw: list[bytes],
        items: list[Item],
        positions: list[int],
        start: int,
        backlog: int,
    ) -> tuple[ledger.Plan, int]:
        """Commit items[start:]; returns the plan committed and the entries of `raw` it covers.
        When PostgreSQL refuses it for the data it carries, find the first item whose presence
        makes it refuse (a binary search of rolled-back tries), commit the items before it and
        that item as a dead letter with the error, and return that: the caller goes on with the
        rest. Raises postgres.ERRORS for an outage or a refusal that is not the data's."""
        rest = items[start:]
        plan = self.plan(rest)
        end = self.entries_through(raw, positions, start + plan.consumed, plan.stop)
        try:
            self.commit(plan, backlog - end)
            return plan, end
        except postgres.ERRORS as exc:
            if not postgres.refused_for_data(exc):
                raise
            error = exc
        good, bad = 0, len(rest)  # rest[:good] is accepted, rest[:bad] refused
        while bad - good > 1:
            middle = (good + bad) // 2
            if self.accepted(self.plan(rest[:middle])):
                good = middle
            else:
                bad = middle
        culprit = rest[good]
        plan = self.plan(rest[:good])
        if not ledger.already_done(culprit, plan.done):
            plan.done[culprit.epoch] = culprit.seq
            plan.last = (culprit.epoch, culprit.seq)
            plan.reject(culprit, f"PostgreSQL refused it ({describe_error(error)})")
        plan.consumed = good + 1
        end = self.entries_through(raw, positions, start + plan.consumed, False)
        self.commit(plan, backlog - end)  # a refusal now is not this item's: it raises
        return plan, end

    def plan(self, items: list[Item]) -> ledger.Plan:
        """The items applied to the committed state (ledger.plan_batch), with the row indexes
        of the pool (row_indexes.py; a reservation when it runs short)."""
        indexes = self.row_indexes.at_least(self.session.connection(), len(items))
        return ledger.plan_batch(items, self.meters, self.records, self.done, indexes)

    def accepted(self, plan: ledger.Plan) -> bool:
        """Whether PostgreSQL takes this plan: written, then rolled back (its row indexes
        stay in the pool: nothing used them)."""
        con = self.session.connection()
        con.run("BEGIN")
        try:
            self.write(con, plan, 0)
        except postgres.ERRORS as exc:
            if not postgres.refused_for_data(exc):
                raise
            return False
        finally:
            with contextlib.suppress(*postgres.ERRORS):
                con.run("ROLLBACK")
        return True

    def report(
        self, plan: ledger.Plan, raw: list[bytes], positions: list[int], begin: int, end: int
    ) -> None:
        """After a commit: its dead letters and log lines (report.report)."""
        report(self.queues, plan, raw, positions, self.unreadable, begin, end)
        if plan.last is not None:
            self.done_last = plan.last[1]

    def acknowledge(self, count: int) -> bool:
        """Drop the first `count` committed entries from Redis (lost: they come back and are
        skipped as done)."""
        try:
            if count:
                self.queues.ack(count)
            self.redis_outage.succeeded()
        except redis.RedisError as exc:
            self.redis_outage.failed(exc)
            return False
        return True

    def commit(self, plan: ledger.Plan, backlog: int) -> None:
        # Tried, its indexes are never handed out again: a lost connection leaves its outcome
        # unknown, and consumption.index has no unique constraint to refuse a second use.
        self.row_indexes.spend(plan.new_rows)
        con = self.session.connection()
        with postgres.transaction(con):
            current = self.write(con, plan, backlog)
        self.session.touched()
        self.progress_epoch = current
        self.saved_backlog = backlog
        self.pg_outage.succeeded()

    def write(self, con: postgres.Connection, plan: ledger.Plan, backlog: int) -> str:
        """The plan's statements, inside the caller's transaction; the epoch worker_progress
        holds after them."""
        store.insert_rows(con, plan.new_rows)
        store.update_rows(con, plan.moved_rows)
        # Stored only where the moved rows do not hold the state.
        stored = status.to_store(self.records, plan.records, plan.moved_rows, plan.readings)
        store.save_status(con, stored, plan.readings)
        store.insert_dead_letters(con, plan.dead_letters)
        current = plan.last[0] if plan.last is not None else self.progress_epoch
        finished = finished_epochs(self.done, plan.done, current, self.progress_epoch)
        if finished:
            store.save_done(con, finished)
        if plan.last is not None:
            store.save_progress(con, plan.last[0], plan.last[1], backlog)
        return current


def finished_epochs(
    before: dict[str, int], after: dict[str, int], current: str, stored: str
) -> dict[str, int]:
    """What worker_epochs must be told by a commit: worker_progress holds the current epoch's
    last item, so a commit writes one row, not two; worker_epochs gets an epoch's last item
    once it is no longer current (a new epoch begins only when Redis lost its data) or when an
    older epoch's items still come (they wait in Redis from before)."""
    return {
        e: seq for e, seq in after.items() if e != current and (before.get(e) != seq or e == stored)
    }
