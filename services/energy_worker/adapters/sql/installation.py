"""The publisher's SQL: this installation's id, whether anything committed changed, and the
configured meters as committed. It only reads."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import Any

from energy_worker.adapters.postgres import Connection
from energy_worker.core.domain import MeterSnapshot

# Has anything committed changed? Lookups on tables of at most 8 rows and one: the processor
# stamps meter_status.time_stamp and worker_progress.updated_at in every transaction that changes
# a meter, and the set-up rewrites meter_metadata (names, pulse constants) at each start.
_CHANGES = """
SELECT (SELECT max(time_stamp) FROM meter_status),
       (SELECT updated_at FROM worker_progress WHERE id = 1),
       (SELECT md5(string_agg(concat_ws('/', meter_no, meter_name, pulse_per_kwh, max_energy),
                              '|' ORDER BY meter_no))
        FROM meter_metadata)
"""

# The configured meters as committed, in one statement (one snapshot). meter_last_pulse finds
# each meter's latest pulse through the index consumption_meter_time; typed-in rows are skipped.
_METERS = """
SELECT l.meter_no, l.meter_name, l.pulse_per_kwh, l.max_energy, s.kwh, s.pulses_counted,
       (extract(epoch FROM l.last_pulse) * 1000)::bigint, l.last_watt
FROM meter_last_pulse l
JOIN meter_status s ON s.meter_no = l.meter_no
WHERE l.meter_no = ANY(CAST(:meters AS int[]))
ORDER BY l.meter_no
"""


def installation_id(con: Connection) -> str:
    """This installation's id (table installation, created once by the schema's baseline
    migration, services/energy_worker/adapters/sql/migrations/0010_baseline.sql)."""
    ((ident,),) = con.run("SELECT id FROM installation")
    return str(ident)


def changes(con: Connection) -> list[Any]:
    """A token that differs whenever something the publisher shows may have changed."""
    (row,) = con.run(_CHANGES)
    return row


def read_meters(con: Connection, configured: Collection[int]) -> dict[int, MeterSnapshot]:
    rows = con.run(_METERS, meters=sorted(configured))
    return {
        no: MeterSnapshot(
            number=no,
            name=name,
            pulses_per_kwh=ppk,
            max_power_w=max_w,
            reading_kwh=Decimal(reading),
            pulses_counted=counted,
            last_pulse_ms=last_ms,
            last_watt=last_watt,
        )
        for no, name, ppk, max_w, reading, counted, last_ms, last_watt in rows
    }
