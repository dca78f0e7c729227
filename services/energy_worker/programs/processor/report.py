"""What the processor says after a commit: the dead letters it made, in Redis's list too, and
its log lines (Redis-borne text always quoted)."""

from __future__ import annotations

import logging

from energy_worker.adapters import logs
from energy_worker.adapters.work_queue import PREVIEW_BYTES, PROCESSING, Queues
from energy_worker.core import ledger
from energy_worker.core.domain import printable

log = logging.getLogger("energy_worker.programs.processor")


def report(
    queues: Queues,
    plan: ledger.Plan,
    raw: list[bytes],
    positions: list[int],
    unreadable: dict[int, str],
    begin: int,
    end: int,
) -> None:
    """After a commit of entries begin to end of `raw`: the dead letters it made, in Redis's
    list too (after the commit, so a try that PostgreSQL refused leaves none), and the log lines."""
    for level, line in plan.notes:
        log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", line)
    readable = set(positions)
    for position in range(begin, end):
        if position not in readable:
            log.error(
                "unreadable work item %s (%s); kept as a dead letter",
                logs.quoted(raw[position]),
                unreadable.get(position, "?"),
            )
            queues.dead_letter(
                PROCESSING,
                printable(raw[position].decode("utf-8", "replace"), PREVIEW_BYTES),
                f"unreadable work item: {unreadable.get(position, '?')}",
            )
    for item, reason in plan.unusable:
        log.error(
            "cannot use %s %s: %s; kept in the dead-letter list",
            logs.quoted(item.key),
            logs.quoted(item.value),
            logs.quoted(reason, 200),
        )
        queues.dead_letter(printable(item.key), printable(item.value), printable(reason))
    if plan.skipped:
        log.warning(
            "%s items were committed before (redelivered after a crash or a lost "
            "acknowledgement); skipped",
            plan.skipped,
        )
    log.debug(
        "%s entries committed (%s skipped as done, %s rows new, %s moved)",
        end - begin,
        plan.skipped,
        len(plan.new_rows),
        len(plan.moved_rows),
    )
