"""The publisher's connection to the MQTT broker (paho-mqtt), and what each new connection does.

A connection starts with a last will (`offline`, retained, on the availability topic), then its
session: `online`, and a look at what this installation left retained before: the publisher
subscribes to its own config and state topics, publishes a marker on its sync topic and waits
for it to come back, by when the broker has sent every retained message of those
subscriptions. Topics of meters no longer configured are then emptied (Home Assistant removes
those entities), and the energy values Home Assistant last saw are remembered (it must never
see one go down). Everything else is published afresh on each connection, so a broker that
restarted without persistence gets it all again.

One thread: paho's network loop runs inside the publisher's own wait (Broker.loop, a select()
on the socket), never in a thread of paho's. Each call into paho is a busy section
(program.Termination): SIGTERM lets it finish, so the client is intact for the final
`offline`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Collection
from decimal import Decimal
from typing import Any

import paho.mqtt.client as mqtt

from energy_worker.programs.publisher.ha_discovery import (
    OFFLINE,
    ONLINE,
    Layout,
)
from energy_worker.programs.publisher.retained import RetainedSync
from energy_worker.programs.publisher.settings import MqttSettings
from energy_worker.runtime import program

KEEPALIVE = 60  # seconds; the broker sends the last will after 1.5 x this without a word
CONNECT_TIMEOUT = 5.0  # seconds for the TCP connection (and TLS handshake)
CONNACK_TIMEOUT = 10.0  # seconds the broker may take to answer CONNECT
SYNC_TIMEOUT = 5.0  # seconds to wait for the retained messages read back after a connect
STABLE_AFTER = 10.0  # a connection lost sooner than this delays the next one ...
MAX_FLAP_DELAY = 30.0  # ... 1 s, doubling up to this
QOS = 1

log = logging.getLogger("energy_worker.programs.publisher")


def mqtt_client(s: MqttSettings, layout: Layout) -> mqtt.Client:
    """A paho client with our identity, login, TLS and last will; not connected."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"energy-worker-{layout.installation}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,  # our loop reconnects, with our backoff and our logs
    )
    client.connect_timeout = CONNECT_TIMEOUT
    if s.username:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        # Certificate and host name verified: the system's CAs, or only MQTT_CA_FILE's.
        client.tls_set_context(ssl.create_default_context(cafile=s.ca_file))
    client.will_set(layout.availability_topic, OFFLINE, qos=QOS, retain=True)
    return client


class BrokerRefused(Exception):
    """The broker answered CONNECT with a refusal: a wrong login, not authorised, ..."""


class Broker:
    """One MQTT client for the publisher's whole life, connected again after each loss."""

    def __init__(
        self,
        settings: MqttSettings,
        layout: Layout,
        configured: Collection[int],
        termination: program.Termination,
        *,
        connack_timeout: float = CONNACK_TIMEOUT,
        sync_timeout: float = SYNC_TIMEOUT,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.termination = termination
        self.connack_timeout = connack_timeout
        self.stable_after = stable_after
        self.client = self._new_client()
        self.connected = False
        self.connected_at = 0.0
        self.flap_delay = 0.0  # the broker keeps dropping us right after accepting: wait
        self._connack: mqtt.ReasonCode | None = None
        # The session (one connection).
        self.online: bool | None = None
        self.sync = RetainedSync(layout, configured, sync_timeout)
        self.sent: dict[str, str] = {}  # topic -> payload published in this session
        self.sent_at: dict[str, float] = {}  # topic -> when (the publisher's clock)
        # What Home Assistant has seen of each meter's energy (kept across connections).
        self.seen_energy: dict[int, Decimal] = self.sync.seen_energy

    def describe(self) -> str:
        return self.settings.describe()

    def _new_client(self) -> mqtt.Client:
        client = mqtt_client(self.settings, self.layout)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- connecting -----------------------------------------------------------------------

    def connect(self) -> None:
        """One attempt to connect, then the start of the session. Raises OSError (refused,
        unreachable, a timeout, a TLS failure) or BrokerRefused."""
        client = self.client
        self._connack = None
        with self.termination.busy():
            client.connect(self.settings.host, self.settings.port, keepalive=KEEPALIVE)
        answer = self._await_connack()
        if answer.is_failure:
            self._drop()
            raise BrokerRefused(str(answer))
        self.connected = True
        self.connected_at = time.monotonic()
        self._start_session()

    def _await_connack(self) -> mqtt.ReasonCode:
        deadline = time.monotonic() + self.connack_timeout
        while True:
            answer = self._connack
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                self._drop()
                raise TimeoutError("no answer to CONNECT")
            with self.termination.busy():
                rc = self.client.loop(0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                raise ConnectionError(mqtt.error_string(rc))

    def _drop(self) -> None:
        """Close a connection that never became ours (no CONNACK, or a refusal)."""
        with self.termination.busy():
            self.client.disconnect()

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: mqtt.ReasonCode, _p: Any
    ) -> None:
        self._connack = reason
        if not reason.is_failure:
            # Messages of the previous connection that were never acknowledged would be sent
            # again first: old values. The new session publishes everything afresh instead.
            client.drop_out_messages()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            # A connection that ends right after it began (another client with our id, a
            # broker that rejects what we send) must not become a tight reconnect loop.
            if time.monotonic() - self.connected_at < self.stable_after:
                self.flap_delay = min(max(self.flap_delay * 2, 1.0), MAX_FLAP_DELAY)
            else:
                self.flap_delay = 0.0
            # paho reports a closed socket as "Unspecified error"; say what happened instead.
            why = "connection closed" if str(reason) == "Unspecified error" else str(reason)
            log.warning(
                "lost the MQTT broker %s (%s); reconnecting%s",
                self.describe(),
                why,
                f" in {self.flap_delay:.0f} s" if self.flap_delay else "",
            )
        self.connected = False

    # --- the session ----------------------------------------------------------------------

    def _start_session(self) -> None:
        """A new connection: everything goes out again. First `online` and a look at what this
        installation left retained (answered by our sync marker)."""
        layout = self.layout
        self.sent.clear()
        self.sent_at.clear()
        self.online = None
        token = self.sync.start()
        with self.termination.busy():
            self.client.subscribe(
                [(layout.config_wildcard, 0), (layout.state_wildcard, 0), (layout.sync_topic, 0)]
            )
        self.availability(online=True)
        with self.termination.busy():
            self.client.publish(layout.sync_topic, token, qos=0, retain=False)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic  # paho decodes it as UTF-8: a broker may pass on anything
        except UnicodeDecodeError:
            return  # not one of our topics
        if self.sync.heard(topic, bytes(msg.payload)):
            self._finish_sync()

    def check_sync(self) -> bool:
        """Whether the retained messages have been read back (at the deadline: go on without)."""
        if self.connected and self.sync.overdue():
            log.warning("the broker did not return our sync marker; publishing anyway")
            self._finish_sync()
        return self.sync.synced

    def _finish_sync(self) -> None:
        """Every retained message of ours has arrived: empty those of meters that are no longer
        in the meter config."""
        layout = self.layout
        removed = self.sync.stale_topics()
        with self.termination.busy():
            for topic in removed:
                self.client.publish(topic, b"", qos=QOS, retain=True)
            self.client.unsubscribe(
                [layout.config_wildcard, layout.state_wildcard, layout.sync_topic]
            )
        if removed:
            log.info(
                "removed %s retained topics of meters no longer configured (%s)",
                len(removed),
                ", ".join(removed),
            )
        self.sync.synced = True

    # --- publishing -------------------------------------------------------------------------

    def availability(self, *, online: bool) -> None:
        """`online` or `offline` for every sensor, once per change."""
        if not self.connected or self.online is online:
            return
        with self.termination.busy():
            self.client.publish(
                self.layout.availability_topic, ONLINE if online else OFFLINE, qos=QOS, retain=True
            )
        self.online = online

    def send(self, topic: str, payload: str, at: float | None = None) -> None:
        """Publish retained at QoS 1; remembered as sent in this session (at `at`)."""
        with self.termination.busy():
            info = self.client.publish(topic, payload, qos=QOS, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.sent[topic] = payload
            if at is not None:
                self.sent_at[topic] = at
            log.debug("published %s %s", topic, payload)

    # --- the network loop -------------------------------------------------------------------

    def loop(self, timeout: float) -> None:
        """Run the network loop for up to `timeout` seconds (keepalive, acknowledgements, what
        the broker sends): select() sleeps until the broker says something or the time is up."""
        with self.termination.busy():
            rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._on_disconnect(self.client, None, None, mqtt.error_string(rc), None)

    def close(self) -> None:
        """Say `offline` (QoS 0: nothing can hold it back), then leave."""
        if not self.connected:
            return
        self.connected = False  # a disconnection we asked for: _on_disconnect stays quiet
        try:
            self.client.publish(self.layout.availability_topic, OFFLINE, qos=0, retain=True)
            self.client.disconnect()
        except Exception as exc:  # the last will says it for us
            log.debug("could not say offline: %s", exc)
