"""The history's row indexes the processor may hand to the ledger: numbers of consumption's
sequence, reserved ahead in blocks, outside the commit transaction, so that a plan comes out
with its final indexes.

consumption.index has no unique constraint (schema version 8 put a BRIN index in place of the
primary key), so nothing but this pool stops a number from being used twice. Hence:
- a number goes out of the pool as soon as a commit of a plan that holds it is tried: its
  outcome may be unknown (a lost connection at COMMIT) or a success; only the rolled-back tries
  of the isolation of a refused item (commits.py) may use numbers again;
- the pool is emptied whenever the processor loads its state (a reconnection, an outage);
- numbers are handed out in ascending order, so commits use rising numbers, as the pusher
  expects (pusher_state.seen_index: the rows above it are new).
A reservation is a transaction of its own whose commit waits for the WAL on disk (an fsync of
the SD card): blocks make it rare, and `reservations` counts them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from energy_worker.adapters.postgres import Connection
from energy_worker.adapters.sql import ingest as store

# Numbers a reservation takes at least. Only a new row takes one (in bench/bench.py --only sd-day,
# about one per 60 pulses at 7 x 1/s), so a block lasts hours: about ten reservations a day.
BLOCK = 1024


class RowIndexes:
    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self.free: list[int] = []  # ascending, none used by a commit tried
        self.reservations = 0

    def at_least(self, con: Connection, need: int) -> Sequence[int]:
        """The free numbers, `need` of them at least (reserved in whole blocks if short)."""
        short = need - len(self.free)
        if short > 0:
            blocks = -(-short // self.block)
            reserved = store.reserve_indexes(con, blocks * self.block)
            # Above every number reserved before: the sequence only rises.
            self.free.extend(reserved)
            self.reservations += 1
        return self.free

    def spend(self, used: Iterable[int]) -> None:
        """A commit holding `used` is about to be tried: those numbers, and any below them,
        never go out again."""
        top = max(used, default=None)
        if top is not None:
            del self.free[: bisect_right(self.free, top)]

    def discard(self) -> None:
        """The processor loads its state again: trust no number reserved before."""
        self.free.clear()
