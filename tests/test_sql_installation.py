"""The publisher's SQL (services/energy_worker/adapters/sql/installation.py), against the test's
database: the installation's id, the token that tells a change, and the meters as committed.
What the publisher sends is tests/test_publisher.py's."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pg8000.native

from energy_worker.adapters import config, postgres
from energy_worker.adapters.sql import ingest
from energy_worker.adapters.sql import installation as store
from energy_worker.adapters.sql import meters as meter_store
from energy_worker.core.domain import MeterRecord, MeterSnapshot, MeterState, Row, Run

AT = datetime(2026, 6, 10, 12, tzinfo=UTC)
AT_MS = int(AT.timestamp()) * 1000


def test_the_installation_id_is_one_topic_level_and_stays_the_same(
    sql: pg8000.native.Connection, pg: config.PostgresSettings
):
    ident = store.installation_id(sql)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ident)
    other = postgres.connect(pg, "installation test")
    try:
        assert store.installation_id(other) == ident  # another session, the same installation
    finally:
        other.close()
    assert store.installation_id(sql) == ident


def test_the_change_token_moves_with_a_commit_and_a_renamed_meter(sql: pg8000.native.Connection):
    first = store.changes(sql)
    assert store.changes(sql) == first  # nothing changed: the same token
    ingest.save_progress(sql, "e1", 1, 0)
    after_commit = store.changes(sql)
    assert after_commit != first
    meters = meter_store.load_meters(sql)
    meter_store.upsert_meters(sql, {1: replace(meters[1], name="Kitchen")})
    renamed = store.changes(sql)
    assert renamed[2] != after_commit[2] and renamed[:2] == after_commit[:2]
    meter_store.upsert_meters(sql, {1: replace(meters[1], pulses_per_kwh=2000)})
    assert store.changes(sql)[2] != renamed[2]  # a new pulse constant too


def test_the_meters_as_committed(sql: pg8000.native.Connection):
    ingest.insert_rows(sql, {
        1: Row(1, 2300, 5, Decimal("0.005"), 100, 1565, AT, pulses=5),
        2: Row(1, None, 5, Decimal("1234.5"), None, -1, AT.replace(hour=13), pulses=5,
               typed_in=True),
    })  # fmt: skip
    ingest.save_status(
        sql,
        {1: MeterRecord(MeterState(5, None, -1, AT_MS + 3_600_000), Run(None, 2), counted=5)},
        {1: Decimal("1234.5")},
    )
    got = store.read_meters(sql, [1, 2, 99])
    assert got == {
        1: MeterSnapshot(1, "Meter 1", 1000, 17250, Decimal("1234.5"), 5, AT_MS, 2300),
        2: MeterSnapshot(2, "Meter 2", 1000, 17250, Decimal(0), 0, None, None),
    }  # the typed-in reading is the reading, not a pulse; meter 99 is none of ours
    assert got[1].counted_kwh == Decimal("0.005")
    assert store.read_meters(sql, []) == {}
