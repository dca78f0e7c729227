"""The publisher against a real broker (Mosquitto) and PostgreSQL, in-process (Publisher.run_once,
clocks injected where time matters): discovery as Home Assistant reads it, readings equal to
what is committed, outages, the last will, the throttle, removed meters, the lock, and no
secret in the logs. As a process only for what a process is: SIGTERM and the exit statuses.

The brokers are tests/mqtt_support.py's: the shared one (a prefix of each test's own), and
private ones for restarts, passwords and TLS. Meter state is committed with SQL as the
processor would, except where the real processor (in-process) is the point.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import mqtt_support as ms
from energy_worker.adapters import config, postgres
from energy_worker.core.arithmetic import power_bound_w
from energy_worker.programs.processor import Processor
from energy_worker.programs.publisher import Publisher, ha_discovery
from energy_worker.programs.publisher import settings as publisher_settings
from helpers import METERS, REPO, enqueue, wait_until
from mqtt_support import Space, Watcher
from tcpproxy import TcpProxy

ENTITIES = ha_discovery.ENTITIES
METERS_FILE = REPO / "services" / "energy_worker" / "meters.toml"

# The shared fixtures, by name in this module, where pytest looks for them.
mqtt_broker, brokers, space = ms.mqtt_broker, ms.brokers, ms.space


@pytest.fixture
def watch(space: Space) -> Iterator[Watcher]:
    w = space.watch()
    yield w
    w.close()


@pytest.fixture
def make(pg: config.PostgresSettings, space: Space) -> Iterator[Callable[..., Publisher]]:
    """In-process publishers with short waits: make(), make(other_space, MQTT_TLS="true"),
    make(meters=..., clock=...). Each is closed at the end, before the space is emptied (this
    fixture depends on `space`, so it is torn down first)."""
    made: list[Publisher] = []

    def start(
        where: Space | None = None,
        meters: Iterable[int] = METERS,
        pg_settings: config.PostgresSettings | None = None,
        env: dict[str, str] | None = None,
        **options: object,
    ) -> Publisher:
        settings = publisher_settings.mqtt_settings((where or space).env(**(env or {})))
        options = {
            "poll_interval": 0.01,
            "broker_retry": (0.01, 0.05),
            "pg_retry": (0.02, 0.1),
            "min_interval": 0.0,  # no throttle, but in the test of the throttle
            "sync_timeout": 2.0,
            "connack_timeout": 2.0,
            **options,
        }
        publisher = Publisher(pg_settings or pg, settings, sorted(meters), **options)  # type: ignore[arg-type]
        made.append(publisher)
        return publisher

    yield start
    for publisher in made:
        publisher.close()


def run_until(
    publishers: Publisher | list[Publisher],
    condition: Callable[[], object],
    timeout: float = 10.0,
    what: str = "",
) -> None:
    """Step the publishers until the condition holds."""
    group = publishers if isinstance(publishers, list) else [publishers]

    def step() -> object:
        for publisher in group:
            publisher.run_once()
        return condition()

    wait_until(step, timeout, 0, what or str(condition))


def installation(sql) -> str:
    return str(sql.run("SELECT id FROM installation")[0][0])


# --- committing meter state as the processor would ---------------------------------------------


def commit(
    sql,
    meter: int,
    *,
    counted: int | None = None,
    kwh: str | None = None,
    pulse_at: datetime | None = None,
    watt: int | None = None,
    typed_in: bool = False,
) -> None:
    """One transaction: a consumption row (a pulse, or a typed-in reading) and meter_status."""
    sql.run("BEGIN")
    status = sql.run(
        "SELECT pulses_counted, kwh FROM meter_status_stored WHERE meter_no = :m FOR UPDATE",
        m=meter,
    )[0]
    counted = status[0] if counted is None else counted
    reading = Decimal(kwh) if kwh is not None else status[1]
    at = pulse_at or datetime.now(UTC)
    sql.run(
        """INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kwh, cor_time_stamp,
                                    typed_in, pulses)
           VALUES (:m, :w, :c, :k, :t, :typed, :n)""",
        n=counted,
        m=meter,
        w=watt,
        c=int(reading * 1000),
        k=reading,
        t=at,
        typed=typed_in,
    )
    sql.run(
        """UPDATE meter_status_stored SET pulses_counted = :n, kwh = :k, meter_counts = :c,
                  cor_time_stamp = CASE WHEN :typed THEN cor_time_stamp ELSE :t END,
                  time_stamp = clock_timestamp()
           WHERE meter_no = :m""",
        n=counted,
        k=reading,
        c=int(reading * 1000),
        t=at,
        typed=typed_in,
        m=meter,
    )
    sql.run("COMMIT")


def committed(sql, meter: int) -> tuple[str, str]:
    """(energy, reading) as the publisher must show them: pulses counted / pulses per kWh, and
    meter_status.kWh, as exact text."""
    ((counted, ppk, reading),) = sql.run(
        """SELECT s.pulses_counted, m.pulse_per_kwh, s.kwh FROM meter_status s
           JOIN meter_metadata m USING (meter_no) WHERE s.meter_no = :m""",
        m=meter,
    )
    energy = ha_discovery.format_kwh(Decimal(counted) / Decimal(ppk))
    return energy, ha_discovery.format_kwh(Decimal(reading))


def published(w: Watcher, layout: ha_discovery.Layout, sql, meters: Iterable[int] = METERS) -> bool:
    """Every meter's energy and reading as committed, and the sensors online."""
    if w.latest(layout.availability_topic) != b"online":
        return False
    for no in meters:
        energy, reading = committed(sql, no)
        if w.latest(layout.state_topic(no, "energy")) != energy.encode():
            return False
        if w.latest(layout.state_topic(no, "reading")) != reading.encode():
            return False
    return True


def is_(w: Watcher, topic: str, payload: bytes | str) -> Callable[[], bool]:
    want = payload.encode() if isinstance(payload, str) else payload
    return lambda: w.latest(topic) == want


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """Log records at WARNING that mention text (debug lines repeat an outage; these must not)."""
    return sum(r.levelno == logging.WARNING and text in r.getMessage() for r in caplog.records)


# --- tests ------------------------------------------------------------------------------------


def test_discovery_configs_are_what_home_assistant_documents(space, watch, make, sql, caplog):
    layout = space.layout(installation(sql))
    run_until(make(), lambda: published(watch, layout, sql))
    got = space.retained()
    node = f"energy_worker_{layout.installation}"
    base = f"{space.topic_prefix}/{layout.installation}"
    device = {
        "identifiers": [node],
        "name": "energy-worker",
        "manufacturer": "energy-worker",
        "model": "S0 pulse meters",
    }
    expected = {
        "energy": {"unit_of_measurement": "kWh", "device_class": "energy",
                   "state_class": "total_increasing"},
        "reading": {"unit_of_measurement": "kWh", "device_class": "energy"},
        "power": {"unit_of_measurement": "W", "device_class": "power",
                  "state_class": "measurement"},
    }  # fmt: skip
    unique_ids = set()
    for no in METERS:
        for entity in ENTITIES:
            topic = f"{space.discovery_prefix}/sensor/{node}/meter_{no}_{entity}/config"
            discovered = json.loads(got[topic])
            assert discovered == {
                "name": f"Meter {no} {entity}",
                "unique_id": f"{node}_meter_{no}_{entity}",
                "state_topic": f"{base}/meter/{no}/{entity}",
                "availability_topic": f"{base}/status",
                "payload_available": "online",
                "payload_not_available": "offline",
                "qos": 1,
                "device": device,
                "origin": {"name": "energy-worker"},
                **expected[entity],
            }
            unique_ids.add(discovered["unique_id"])
            assert f"{base}/meter/{no}/{entity}" in got  # the state, retained
    assert len(unique_ids) == 21
    assert got[f"{base}/status"] == b"online"
    assert got[f"{base}/meter/1/power"] == b"None"  # no pulse yet: unknown
    # Nothing else: the sync marker is not retained.
    assert len(got) == 21 * 2 + 1
    assert "connected to the MQTT broker" in caplog.text


def test_unique_ids_survive_a_restart_and_a_rename(space, watch, make, sql):
    layout = space.layout(installation(sql))
    topic = layout.config_topic(2, "energy")
    first = make()
    run_until(first, lambda: watch.latest(topic), what="meter 2's config")
    before = json.loads(watch.latest(topic) or b"")
    first.close()
    sql.run("UPDATE meter_metadata SET meter_name = 'Heat pump' WHERE meter_no = 2")
    run_until(
        make(),
        lambda: json.loads(watch.latest(topic) or b"{}").get("name") == "Heat pump energy",
        what="the renamed config",
    )
    after = json.loads(watch.latest(topic) or b"")
    assert after["unique_id"] == before["unique_id"]
    assert after["state_topic"] == before["state_topic"]
    assert after["device"] == before["device"]
    assert installation(sql) == layout.installation


def test_readings_follow_the_processor_through_pulses_and_a_typed_in_reading(
    space, watch, make, r, pg, sql
):
    processor = Processor(r, pg, commit_interval=0.01, durable_after=0.0)
    now_ms = int(time.time() * 1000)
    # A fixed wall clock: the power shown is then exactly the bound 20 s after the last pulse.
    publisher = make(clock=lambda: now_ms / 1000)
    layout = space.layout(installation(sql))
    energy, reading, power = (layout.state_topic(1, e) for e in ENTITIES)
    try:
        run_until(publisher, lambda: published(watch, layout, sql))
        assert watch.latest(power) == b"None"  # no pulse yet

        # Five pulses one second apart (3600 W at 1000 pulses/kWh), the last 20 s ago.
        last_ms = now_ms - 20_000
        for i in range(5):
            enqueue(r, "channel:1:timestamp", str(1000 * (i + 1)), last_ms - 4000 + 1000 * i)
        wait_until(lambda: processor.run_once() or committed(sql, 1) == ("0.005", "0.005"))
        run_until(publisher, is_(watch, energy, "0.005"))
        run_until(publisher, is_(watch, reading, "0.005"))
        # The last pulse's 3600 W capped by the bound 20 s after it.
        run_until(publisher, is_(watch, power, str(power_bound_w(20_000, 1000))))
        assert power_bound_w(20_000, 1000) == 180

        # A typed-in reading: shown as the new reading, never as energy used.
        typed = time.monotonic()
        enqueue(r, "channel:1:metercount", "27997", now_ms)
        wait_until(lambda: processor.run_once() or committed(sql, 1) == ("0.005", "279.97"))
        run_until(publisher, is_(watch, reading, "279.97"))
        assert watch.of(energy, typed) == []
        # The next pulse counts from the typed-in reading: 279.971, exact.
        enqueue(r, "channel:1:timestamp", "6000", last_ms + 1000)
        wait_until(lambda: processor.run_once() or committed(sql, 1) == ("0.006", "279.971"))
        run_until(
            publisher, lambda: is_(watch, reading, "279.971")() and is_(watch, energy, "0.006")()
        )
        assert [m.payload for m in watch.of(energy, typed)] == [b"0.006"]
        energies = [Decimal(m.payload.decode()) for m in watch.of(energy)]
        assert energies == sorted(energies)  # never down
    finally:
        processor.session.close()


def test_power_falls_toward_zero_while_pulses_stay_away(space, watch, make, sql):
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    now = [last.timestamp() + 2]
    publisher = make(clock=lambda: now[0])
    layout = space.layout(installation(sql))
    power = layout.state_topic(3, "power")
    commit(sql, 3, counted=1, kwh="0.001", pulse_at=last, watt=5000)
    # 5000 W, but 2 s without a pulse at 1000 pulses/kWh means at most 1800 W, and less and less.
    shown = []
    for seconds in (2, 4, 10, 3600, 86_400):
        now[0] = last.timestamp() + seconds
        expected = min(5000, power_bound_w(seconds * 1000, 1000))
        run_until(publisher, is_(watch, power, str(expected)))
        shown.append(expected)
    assert shown == [1800, 900, 360, 1, 0]
    # After a pulse without a power reading, the bound starts from the meter's maximum (17250 W).
    pulse = last + timedelta(seconds=100)
    commit(sql, 3, counted=2, kwh="0.002", pulse_at=pulse)
    now[0] = pulse.timestamp() + 0.1
    run_until(publisher, is_(watch, power, "17250"))
    now[0] = pulse.timestamp() + 1
    run_until(publisher, is_(watch, power, "3600"))


def test_a_burst_of_commits_is_throttled_to_one_message_a_second(space, watch, make, sql):
    t = [0.0]  # the publisher's monotonic clock, moved by the test
    publisher = make(monotonic=lambda: t[0], poll_interval=0.001, min_interval=1.0)
    layout = space.layout(installation(sql))
    run_until(publisher, lambda: published(watch, layout, sql, [4]))
    start = time.monotonic()
    for n in range(1, 101):  # 100 commits in 2 s of the publisher's time
        t[0] += 0.02
        sql.run(
            """UPDATE meter_status_stored SET pulses_counted = :n, kwh = :k, meter_counts = :n,
                      time_stamp = clock_timestamp() WHERE meter_no = 4""",
            n=n,
            k=Decimal(n) / 1000,
        )
        publisher.run_once()
    t[0] += 1.0  # the last value goes out when its second is over
    run_until(publisher, lambda: published(watch, layout, sql, [4]))
    for entity in ("energy", "reading"):
        got = [m.payload for m in watch.of(layout.state_topic(4, entity), since=start)]
        # one a second: at 1 s and 2 s of the burst (the message before it went out at 0 s),
        # and the final value once its second is over
        assert len(got) <= 3, got
        assert got[-1] == b"0.1"


def test_the_last_will_says_offline_when_the_publisher_dies(space, watch, make, sql):
    publisher = make()
    layout = space.layout(installation(sql))
    run_until(publisher, lambda: published(watch, layout, sql, [1]))
    # Its connection ends without a DISCONNECT, as when the process is killed.
    assert publisher.broker is not None
    sock = publisher.broker.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    wait_until(is_(watch, layout.availability_topic, "offline"), 10)
    assert space.retained()[layout.availability_topic] == b"offline"


def test_sigterm_says_offline_and_exits_143(space, watch, spawn, sql):
    layout = space.layout(installation(sql))
    proc = spawn("publisher", **space.env())
    wait_until(lambda: published(watch, layout, sql), 20, what="the meters published")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait_exit(10) == 143
    assert watch.latest(layout.availability_topic) == b"offline"
    assert "stopped by SIGTERM" in proc.log()


def test_exit_2_with_one_line_on_a_configuration_error(spawn):
    proc = spawn("publisher", MQTT_HOST="", MQTT_PASSWORD="hunter2")
    assert proc.wait_exit(15) == 2
    lines = proc.log().strip().splitlines()
    assert len(lines) == 1 and "configuration error: MQTT_HOST is not set" in lines[0], lines
    assert "hunter2" not in proc.log()


def test_a_broker_restart_gets_the_current_state_republished(brokers, make, sql, caplog):
    caplog.set_level(logging.DEBUG, logger="energy_worker.programs.publisher")
    b = brokers()
    space = Space("127.0.0.1", b.port, "ew-test/restart")
    publisher = make(space, stable_after=0.0)  # no wait for a connection that was short
    layout = space.layout(installation(sql))
    w = space.watch()
    try:
        commit(sql, 5, counted=7, kwh="12.007", pulse_at=datetime.now(UTC), watt=300)
        run_until(publisher, lambda: published(w, layout, sql, [5]))
    finally:
        w.close()
    b.stop()  # no persistence: everything retained is gone with it
    run_until(publisher, lambda: "lost the MQTT broker" in caplog.text)
    commit(sql, 5, counted=9, kwh="12.009", pulse_at=datetime.now(UTC), watt=400)
    run_until(publisher, lambda: "unavailable" in caplog.text)
    run_until(publisher, lambda: caplog.text.count("still unavailable") >= 2)  # some attempts
    b.start()
    run_until(publisher, lambda: "is back after" in caplog.text)
    w = space.watch()
    try:
        run_until(publisher, lambda: published(w, layout, sql))
        assert committed(sql, 5) == ("0.009", "12.009")
        got = space.retained()
        assert len(got) == 21 * 2 + 1
        assert got[layout.state_topic(5, "reading")] == b"12.009"
        # The outage was logged once, however many attempts it took.
        assert warnings(caplog, "unavailable") == 1
    finally:
        w.close()


def test_a_removed_meter_loses_its_entities(space, watch, make, sql, caplog):
    layout = space.layout(installation(sql))
    seven = make()
    run_until(seven, lambda: published(watch, layout, sql))
    seven.close()
    since = time.monotonic()
    six = make(meters=range(1, 7))
    for entity in ENTITIES:
        run_until(six, is_(watch, layout.config_topic(7, entity), b""))
        run_until(six, is_(watch, layout.state_topic(7, entity), b""))
    assert "removed 6 retained topics" in caplog.text
    got = space.retained()
    assert not [t for t in got if "meter_7_" in t or "/meter/7/" in t]
    assert len(got) == 18 * 2 + 1
    # Meters 1-6 were not touched: no empty config went out for them.
    for no in range(1, 7):
        for entity in ENTITIES:
            assert b"" not in [m.payload for m in watch.of(layout.config_topic(no, entity), since)]


def test_energy_never_goes_below_what_home_assistant_has_seen(space, watch, make, sql, caplog):
    layout = space.layout(installation(sql))
    energy, reading = layout.state_topic(2, "energy"), layout.state_topic(2, "reading")
    first = make()
    commit(sql, 2, counted=5, kwh="100.005")
    run_until(first, is_(watch, energy, "0.005"))
    first.close()
    # A database restored from an older backup: fewer pulses counted.
    commit(sql, 2, counted=3, kwh="100.003")
    since = time.monotonic()
    second = make()
    run_until(second, is_(watch, reading, "100.003"))  # the reading may go down
    assert "its energy sensor waits until the count passes it" in caplog.text
    assert watch.of(energy, since) == []  # the energy did not
    commit(sql, 2, counted=6, kwh="100.006")
    run_until(second, is_(watch, energy, "0.006"))
    assert "meter 2: the energy count has passed what was published" in caplog.text
    assert [m.payload for m in watch.of(energy, since)] == [b"0.006"]


@pytest.mark.slow
def test_a_second_publisher_waits_for_the_lock_instead_of_taking_the_client_id(
    space, watch, make, sql, caplog, monkeypatch
):
    monkeypatch.setattr(postgres, "LOCK_RETRY", 0.02)
    layout = space.layout(installation(sql))
    first, second = make(), make()
    run_until(first, lambda: published(watch, layout, sql, [1]))
    run_until(
        [first, second], lambda: "another publisher is working on this database" in caplog.text
    )
    for _ in range(3):
        first.run_once()
        second.run_once()
    assert second.broker is None  # it never connected: the broker never dropped the first
    assert "lost the MQTT broker" not in caplog.text
    first.close()
    since = time.monotonic()
    run_until(second, lambda: watch.of(layout.availability_topic, since)[-1:] != []
              and watch.latest(layout.availability_topic) == b"online")  # fmt: skip
    assert "connected to the MQTT broker" in caplog.text


def test_postgres_outage_makes_the_meters_unavailable_until_it_is_back(
    space, watch, make, pg, sql, caplog
):
    if pg.host.startswith("/"):
        pytest.skip("PostgreSQL over a unix socket: no TCP connection to cut")
    proxy = TcpProxy(pg.host, pg.port)
    try:
        publisher = make(pg_settings=replace(pg, host="127.0.0.1", port=proxy.port))
        layout = space.layout(installation(sql))
        run_until(publisher, lambda: published(watch, layout, sql, [6]))
        proxy.cut()
        run_until(publisher, is_(watch, layout.availability_topic, "offline"))
        run_until(publisher, lambda: "PostgreSQL unavailable" in caplog.text)
        commit(sql, 6, counted=3, kwh="3.003")
        proxy.restore()
        run_until(publisher, lambda: published(watch, layout, sql, [6]), 20)
        assert "PostgreSQL is back" in caplog.text
        assert warnings(caplog, "PostgreSQL unavailable") == 1
    finally:
        proxy.close()


def test_a_wrong_password_is_an_outage_and_no_secret_is_ever_logged(brokers, make, sql, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-pa$$ 'wörd\" %s"
    wrong = "wr0ng-pa$$-9f8e7d"
    b = brokers(users={"energy": secret})
    space = Space("127.0.0.1", b.port, "ew-test/login", "energy", secret)
    bad = make(space, env={"MQTT_USERNAME": "energy", "MQTT_PASSWORD": wrong})
    run_until(bad, lambda: caplog.text.count("still unavailable") >= 2)
    assert "Not authorized" in caplog.text or "Bad user name or password" in caplog.text
    assert warnings(caplog, "unavailable") == 1  # once, however many attempts
    bad.close()
    good = make(space, env={"MQTT_USERNAME": "energy", "MQTT_PASSWORD": secret})
    layout = space.layout(installation(sql))
    w = space.watch()
    try:
        run_until(good, lambda: published(w, layout, sql, [1]))
    finally:
        w.close()
    assert secret not in caplog.text and wrong not in caplog.text
    assert "s3cr3t" not in caplog.text and "wr0ng" not in caplog.text


def test_tls_verifies_the_brokers_certificate(brokers, make, sql, tmp_path, caplog):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    # EC keys: made in milliseconds, where RSA keys take a noticeable part of a second.
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", "/CN=energy-worker test CA")  # fmt: skip
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    b = brokers(tls={"cert": cert, "key": key})
    space = Space("localhost", b.port, "ew-test/tls")
    untrusted = make(space, env={"MQTT_TLS": "true"})
    run_until(untrusted, lambda: "unavailable" in caplog.text)
    assert "certificate verify failed" in caplog.text
    untrusted.close()
    trusted = make(space, env={"MQTT_TLS": "true", "MQTT_CA_FILE": str(ca)})
    run_until(
        trusted, lambda: f"connected to the MQTT broker localhost:{b.port} (TLS)" in caplog.text
    )


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_the_password_is_never_shown():
    s = publisher_settings.mqtt_settings(
        {"MQTT_HOST": "mqtt", "MQTT_USERNAME": "u", "MQTT_PASSWORD": "hunter2"}
    )
    assert s == publisher_settings.MqttSettings(
        "mqtt", 1883, "u", "hunter2", False, None, "homeassistant", "energy-worker"
    )
    assert isinstance(s.password, config.Secret)
    assert "hunter2" not in repr(s) and "hunter2" not in s.describe()
    assert publisher_settings.mqtt_settings({"MQTT_HOST": "m", "MQTT_TLS": "TRUE"}).port == 8883
    assert (
        publisher_settings.mqtt_settings({"MQTT_HOST": "m", "MQTT_TLS": "true"}).describe()
        == "m:8883 (TLS)"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQTT_HOST": ""}, "MQTT_HOST is not set"),
        ({"MQTT_PORT": "x"}, "MQTT_PORT must be a port number"),
        ({"MQTT_PORT": "70000"}, "MQTT_PORT must be a port number"),
        ({"MQTT_TLS": "yes"}, "MQTT_TLS must be true or false"),
        ({"MQTT_PASSWORD": "hunter2"}, "MQTT_PASSWORD is set but MQTT_USERNAME is not"),
        ({"MQTT_CA_FILE": "/etc/hostname"}, "MQTT_CA_FILE is set but MQTT_TLS is not true"),
        ({"MQTT_TLS": "true", "MQTT_CA_FILE": "/nonexistent"}, "cannot read MQTT_CA_FILE"),
        ({"MQTT_DISCOVERY_PREFIX": "home/+/x"}, "MQTT_DISCOVERY_PREFIX must be"),
        ({"MQTT_TOPIC_PREFIX": "a//b"}, "MQTT_TOPIC_PREFIX must be"),
    ],
)  # fmt: skip
def test_a_wrong_setting_is_named_without_its_secret(env, message):
    with pytest.raises(config.ConfigError, match=message) as info:
        publisher_settings.mqtt_settings({"MQTT_HOST": "m", **env})
    assert "hunter2" not in str(info.value)


def test_only_the_publisher_imports_mqtt():
    # The pulse path knows nothing of MQTT: no module but the publisher's imports paho.
    package = REPO / "services" / "energy_worker"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "paho" for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"programs/publisher/broker.py"}
