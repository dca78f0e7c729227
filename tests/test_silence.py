"""One threshold for a silent meter, everywhere: `energy-worker status` and Grafana's view
meter_silence (its panel and alert rule) read the one the set-up writes from METER_SILENT_AFTER."""

from __future__ import annotations

import json
from datetime import timedelta

import pg8000.native

from cli_support import cli
from energy_worker.adapters import config
from energy_worker.adapters.sql import meters as meter_store
from grafana_support import Meter, add_meter


def verdicts(sql: pg8000.native.Connection, worker_env: dict[str, str]) -> tuple[bool, bool]:
    """(Grafana's view says meter 1 is suspicious, status lists it as silent)."""
    ((view,),) = sql.run("SELECT suspicious FROM meter_silence WHERE meter_no = 1")
    status = json.loads(cli(worker_env, "status", "--json").out)
    listed = any(line.startswith("meter 1 ") and "silent" in line for line in status["attention"])
    return view, listed


def test_status_and_grafana_call_a_meter_silent_after_the_same_configurable_time(
    sql: pg8000.native.Connection, worker_env: dict[str, str]
):
    (now,) = sql.run("SELECT now()")[0]
    sql.run("DELETE FROM meter_status_stored WHERE meter_no = 1")
    house = Meter(1, "Meter 1", 1000)  # 2000 W until 20 minutes ago: 660 periods of 1.8 s
    house.pulse_at_power(now - timedelta(minutes=30), now - timedelta(minutes=20), 2000)
    add_meter(sql, house)
    assert verdicts(sql, worker_env) == (False, False)  # the default: an hour
    meter_store.set_silent_after(sql, config.meter_silent_after({"METER_SILENT_AFTER": "900"}))
    assert verdicts(sql, worker_env) == (True, True)
    meter_store.set_silent_after(sql, config.meter_silent_after({}))
    assert verdicts(sql, worker_env) == (False, False)
