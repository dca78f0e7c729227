"""The meter config in the database (meter_metadata, and a meter_status_stored row per meter)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

from energy_worker.adapters.postgres import Connection
from energy_worker.core.domain import Meter


def set_silent_after(con: Connection, seconds: int) -> None:
    """The one threshold for a silent meter (worker_settings), read by the view meter_silence
    (Grafana) and by `energy-worker status` (reports.silent_after)."""
    con.run(
        """
        INSERT INTO worker_settings (name, value) VALUES ('meter_silent_after_s', :s)
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
        """,
        s=seconds,
    )


def upsert_meters(con: Connection, meters: Mapping[int, Meter]) -> None:
    """Apply the meter config: metadata follows the file; counts are never touched."""
    con.run(
        """
        INSERT INTO meter_metadata
            (meter_no, meter_name, pulse_per_kWh, max_energy, deviation_pct, power_factor)
        SELECT m.no, m.name, m.ppk, m.max, m.dev, m.pf
        FROM json_to_recordset(CAST(:meters AS json))
             AS m(no int, name text, ppk int, max int, dev numeric, pf numeric)
        ON CONFLICT (meter_no) DO UPDATE SET
            meter_name = EXCLUDED.meter_name, pulse_per_kWh = EXCLUDED.pulse_per_kWh,
            max_energy = EXCLUDED.max_energy, deviation_pct = EXCLUDED.deviation_pct,
            power_factor = EXCLUDED.power_factor
        """,
        # Text as JSON, never in a driver-built array literal (sql/ingest.py says why);
        # the decimals as JSON strings, which PostgreSQL reads exactly.
        meters=json.dumps(
            [
                {
                    "no": m.number,
                    "name": m.name,
                    "ppk": m.pulses_per_kwh,
                    "max": m.max_power_w,
                    "dev": str(m.deviation_pct),
                    "pf": str(m.power_factor),
                }
                for m in meters.values()
            ]
        ),
    )
    con.run(
        """
        INSERT INTO meter_status_stored (meter_no)
        SELECT unnest(CAST(:no AS int[])) ON CONFLICT (meter_no) DO NOTHING
        """,
        no=list(meters),
    )


def load_meters(con: Connection) -> dict[int, Meter]:
    rows = con.run(
        """SELECT meter_no, meter_name, pulse_per_kWh, max_energy, deviation_pct, power_factor
           FROM meter_metadata ORDER BY meter_no"""
    )
    return {
        no: Meter(no, name, ppk, max_w, Decimal(dev), Decimal(pf))
        for no, name, ppk, max_w, dev, pf in rows
    }
