"""What the publisher tells Home Assistant (pure): topics, discovery payloads as Home Assistant's
MQTT sensor documents them, exact readings, the decaying power, the throttle."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from energy_worker.core.arithmetic import power_bound_w
from energy_worker.core.domain import MeterSnapshot
from energy_worker.programs.publisher import ha_discovery as ha

LAYOUT = ha.Layout("homeassistant", "energy-worker", "0123abcd4567ef89")


BASE = MeterSnapshot(
    number=1,
    name="Meter 1",
    pulses_per_kwh=1000,
    max_power_w=17250,
    reading_kwh=Decimal("279.971"),
    pulses_counted=5,
    last_pulse_ms=1_000_000,
    last_watt=3600,
)


def meter(**changes) -> MeterSnapshot:
    return replace(BASE, **changes)


# --- topics -----------------------------------------------------------------------------------


def test_topics_derive_from_the_installation_and_the_meter_number():
    assert LAYOUT.node_id == "energy_worker_0123abcd4567ef89"
    assert LAYOUT.availability_topic == "energy-worker/0123abcd4567ef89/status"
    assert LAYOUT.state_topic(3, "power") == "energy-worker/0123abcd4567ef89/meter/3/power"
    assert (
        LAYOUT.config_topic(3, "energy")
        == "homeassistant/sensor/energy_worker_0123abcd4567ef89/meter_3_energy/config"
    )
    assert LAYOUT.unique_id(3, "energy") == "energy_worker_0123abcd4567ef89_meter_3_energy"
    assert LAYOUT.config_wildcard == "homeassistant/sensor/energy_worker_0123abcd4567ef89/+/config"
    assert LAYOUT.state_wildcard == "energy-worker/0123abcd4567ef89/meter/+/+"


@pytest.mark.parametrize("prefix", ["", "a/+/b", "#", "a//b", "/a", "a/", "a\0b"])
def test_a_prefix_that_would_change_the_topics_meaning_is_refused(prefix):
    assert not ha.valid_prefix(prefix)
    with pytest.raises(ValueError, match="prefix"):
        ha.Layout(prefix, "energy-worker", "abc")
    with pytest.raises(ValueError, match="prefix"):
        ha.Layout("homeassistant", prefix, "abc")


@pytest.mark.parametrize("ident", ["", "a/b", "a+b", "a b", "x" * 65])
def test_an_installation_id_must_be_one_topic_level_and_a_node_id(ident):
    with pytest.raises(ValueError, match="installation"):
        ha.Layout("homeassistant", "energy-worker", ident)


def test_prefixes_of_several_levels_are_fine():
    layout = ha.Layout("my/ha", "home/energy", "id_1-x")
    topic = "my/ha/sensor/energy_worker_id_1-x/meter_1_power/config"
    assert layout.config_topic(1, "power") == topic
    assert layout.state_topic(1, "power") == "home/energy/id_1-x/meter/1/power"


# --- discovery payloads -----------------------------------------------------------------------


def config(entity: str, name: str = "Meter 1", number: int = 1) -> dict:
    topic = LAYOUT.config_topic(number, entity)
    return json.loads(ha.discovery(LAYOUT, [meter(number=number, name=name)])[topic])


COMMON = {
    "availability_topic": "energy-worker/0123abcd4567ef89/status",
    "payload_available": "online",
    "payload_not_available": "offline",
    "qos": 1,
    "device": {
        "identifiers": ["energy_worker_0123abcd4567ef89"],
        "name": "energy-worker",
        "manufacturer": "energy-worker",
        "model": "S0 pulse meters",
    },
    "origin": {"name": "energy-worker"},
}


def test_energy_sensor_is_total_increasing_kwh_for_the_energy_dashboard():
    assert config("energy") == {
        **COMMON,
        "name": "Meter 1 energy",
        "unique_id": "energy_worker_0123abcd4567ef89_meter_1_energy",
        "state_topic": "energy-worker/0123abcd4567ef89/meter/1/energy",
        "unit_of_measurement": "kWh",
        "device_class": "energy",
        "state_class": "total_increasing",
    }


def test_reading_sensor_is_energy_without_a_state_class_so_it_is_never_summed():
    got = config("reading")
    assert got == {
        **COMMON,
        "name": "Meter 1 reading",
        "unique_id": "energy_worker_0123abcd4567ef89_meter_1_reading",
        "state_topic": "energy-worker/0123abcd4567ef89/meter/1/reading",
        "unit_of_measurement": "kWh",
        "device_class": "energy",
    }
    assert "state_class" not in got and "last_reset_value_template" not in got


def test_power_sensor_is_a_measurement_in_watts():
    assert config("power") == {
        **COMMON,
        "name": "Meter 1 power",
        "unique_id": "energy_worker_0123abcd4567ef89_meter_1_power",
        "state_topic": "energy-worker/0123abcd4567ef89/meter/1/power",
        "unit_of_measurement": "W",
        "device_class": "power",
        "state_class": "measurement",
    }


def test_states_are_plain_numbers_so_no_value_template_is_needed():
    for entity in ha.ENTITIES:
        assert "value_template" not in config(entity)


def test_a_renamed_meter_keeps_its_unique_ids_and_topics():
    for entity in ha.ENTITIES:
        before, after = config(entity, "Meter 1"), config(entity, "Heat pump")
        assert after["name"] == f"Heat pump {entity}"
        assert {k: v for k, v in before.items() if k != "name"} == {
            k: v for k, v in after.items() if k != "name"
        }


def test_discovery_has_three_sensors_per_meter_all_unique_on_one_device():
    meters = [meter(number=n, name=f"M{n}") for n in (1, 2, 7)]
    configs = ha.discovery(LAYOUT, meters)
    assert len(configs) == 9
    payloads = [json.loads(p) for p in configs.values()]
    assert len({p["unique_id"] for p in payloads}) == 9
    assert len({p["state_topic"] for p in payloads}) == 9
    assert all(p["device"] == COMMON["device"] for p in payloads)


def test_the_same_config_is_the_same_bytes():
    # Home Assistant skips a discovery payload that did not change.
    a = ha.discovery(LAYOUT, [meter(), meter(number=2)])
    b = ha.discovery(LAYOUT, [meter(number=2), meter()])
    assert a == b


def test_a_meter_name_with_any_character_is_carried_exactly():
    name = 'Küche "alt" / {x} \\ 🔌'
    assert config("energy", name)["name"] == f"{name} energy"


# --- states -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("279.971", "279.971"),
        ("279.9710", "279.971"),
        ("1E+3", "1000"),
        ("0", "0"),
        ("0E-9", "0"),
        ("0.00125", "0.00125"),
        ("12345678901234567890.123456789", "12345678901234567890.123456789"),
    ],
)
def test_readings_are_written_as_their_exact_decimal_digits(value, text):
    assert ha.format_kwh(Decimal(value)) == text


@given(st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False))
def test_a_formatted_reading_reads_back_as_the_same_number(value):
    text = ha.format_kwh(value)
    assert Decimal(text) == value
    assert "E" not in text and "e" not in text


def test_energy_counts_pulses_only_and_reading_includes_typed_in_readings():
    got = ha.states(LAYOUT, meter(reading_kwh=Decimal("279.971"), pulses_counted=5), 1_000_000)
    assert got == {
        "energy-worker/0123abcd4567ef89/meter/1/energy": "0.005",
        "energy-worker/0123abcd4567ef89/meter/1/reading": "279.971",
        "energy-worker/0123abcd4567ef89/meter/1/power": "3600",
    }
    # 800 pulses per kWh: 1.25 Wh per pulse, exactly.
    m = meter(pulses_per_kwh=800, pulses_counted=3)
    assert ha.states(LAYOUT, m, 0)[LAYOUT.state_topic(1, "energy")] == "0.00375"


def test_power_before_any_pulse_is_unknown():
    m = meter(last_pulse_ms=None, last_watt=None)
    assert ha.states(LAYOUT, m, 5)[LAYOUT.state_topic(1, "power")] == "None"
    assert ha.power_now_w(None, 17250, 1000, None, 5) is None


def test_power_is_the_last_reading_until_the_bound_falls_below_it():
    # 3600 W at 1000 pulses/kWh is one pulse a second: for the first second nothing is known.
    for quiet in (0, 1, 999, 1000):
        assert ha.power_now_w(3600, 17250, 1000, 0, quiet) == 3600
    assert ha.power_now_w(3600, 17250, 1000, 0, 2000) == 1800
    assert ha.power_now_w(3600, 17250, 1000, 0, 3_600_000) == 1
    assert ha.power_now_w(3600, 17250, 1000, 0, 86_400_000) == 0


def test_after_a_pulse_without_power_the_bound_starts_from_the_meters_maximum():
    assert ha.power_now_w(None, 17250, 1000, 0, 1) == 17250
    assert ha.power_now_w(None, 17250, 1000, 0, 1000) == 3600


def test_a_clock_behind_the_last_pulse_shows_the_last_reading():
    assert ha.power_now_w(500, 17250, 1000, 10_000, 9_000) == 500


@given(
    st.one_of(st.none(), st.integers(0, 17250)),
    st.integers(1, 10_000),
    st.integers(0, 10**10),
    st.integers(0, 10**10),
)
def test_power_never_exceeds_the_reading_nor_the_bound_and_only_falls(watt, ppk, t1, t2):
    t1, t2 = sorted((t1, t2))
    p1 = ha.power_now_w(watt, 17250, ppk, 0, t1)
    p2 = ha.power_now_w(watt, 17250, ppk, 0, t2)
    assert p1 is not None and p2 is not None
    assert p2 <= p1 <= (17250 if watt is None else watt)
    assert p1 <= power_bound_w(t1, ppk)


# --- throttle, guards, clean-up ----------------------------------------------------------------


def test_an_entity_publishes_at_most_once_a_second():
    assert ha.throttle_wait(None, 100.0) == 0
    assert ha.throttle_wait(100.0, 100.0) == 1.0
    assert ha.throttle_wait(100.0, 100.25) == 0.75
    assert ha.throttle_wait(100.0, 101.0) == 0
    assert ha.throttle_wait(100.0, 150.0) == 0


def test_a_burst_of_changes_gives_one_message_per_second():
    sent: list[float] = []
    for i in range(1000):  # a change every 3 ms for 3 s
        now = i * 0.003
        if ha.throttle_wait(sent[-1] if sent else None, now) == 0:
            sent.append(now)
    assert len(sent) == 3
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(sent))


def test_energy_below_what_was_published_is_held():
    assert not ha.below_published(Decimal("1.5"), None)
    assert not ha.below_published(Decimal("1.5"), Decimal("1.5"))
    assert not ha.below_published(Decimal("1.6"), Decimal("1.5"))
    assert ha.below_published(Decimal("1.4"), Decimal("1.5"))


@pytest.mark.parametrize(
    ("payload", "value"),
    [(b"279.971", Decimal("279.971")), (b"0", Decimal(0)), (b"None", None), (b"\xff", None)],
)
def test_a_retained_energy_state_is_read_back_exactly(payload, value):
    assert ha.parse_published(payload) == value


def test_stale_topics_are_those_no_configured_meter_uses():
    wanted = ha.discovery(LAYOUT, [meter(number=1)])
    old = ha.discovery(LAYOUT, [meter(number=1), meter(number=7)])
    states = ha.states(LAYOUT, meter(number=7), 0)
    assert ha.stale([*old, *states], wanted) == sorted(
        [LAYOUT.config_topic(7, e) for e in ha.ENTITIES]
        + [LAYOUT.state_topic(7, e) for e in ha.ENTITIES]
    )
    assert ha.stale(wanted, wanted) == []
