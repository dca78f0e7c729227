"""What the MQTT tests share: Mosquitto brokers (the shared one, private ones), a watcher that
records what Home Assistant would see, the retained messages under a prefix, and a test's own
part of a broker (Space).

The broker: the Mosquitto at 127.0.0.1:1883 (EW_TEST_MQTT_HOST, EW_TEST_MQTT_PORT) when one
answers (shared: every test works under a prefix of its own and empties what it left retained,
the shared broker keeps it on disk), else one started for the run from the system's mosquitto
(Debian: the `mosquitto` package). Restarts, passwords and TLS: private brokers only.

The fixtures are imported by name into the test modules that use them (pytest finds fixtures
in the module's namespace).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from energy_worker.programs.publisher import ha_discovery
from helpers import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- brokers ----------------------------------------------------------------------------------


class Mosquitto:
    """A broker of the test's own: no persistence, optionally a password file or TLS."""

    def __init__(
        self, work: Path, users: dict[str, str] | None = None, tls: dict[str, Path] | None = None
    ) -> None:
        self.work = work
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:  # mosquitto started as root drops to this user
            lines.append(f"user {getpass.getuser()}")
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.skip("mosquitto_passwd is not installed")
            passwords = work / "passwords"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), passwords, user,
                     password],
                    check=True,
                    capture_output=True,
                )  # fmt: skip
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        self.conf = work / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log_path = work / f"mosquitto-{self.port}.log"

    def start(self) -> Mosquitto:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=log)
        wait_until(lambda: reachable("127.0.0.1", self.port), 15, what="mosquitto to start")
        return self

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)
        self.popen = None


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The shared broker: the one at EW_TEST_MQTT_HOST:EW_TEST_MQTT_PORT (127.0.0.1:1883) when
    one answers, anonymous access allowed, or one started for this run."""
    host = os.environ.get("EW_TEST_MQTT_HOST", "127.0.0.1")
    port = int(os.environ.get("EW_TEST_MQTT_PORT", "1883"))
    if reachable(host, port):
        yield host, port
        return
    if not Path(MOSQUITTO).exists():
        pytest.skip("no MQTT broker at 127.0.0.1:1883 and no mosquitto to start")
    own = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        own.start()
        yield "127.0.0.1", own.port
    finally:
        own.stop()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start private brokers: brokers(users={...}); all stopped at the end."""
    started: list[Mosquitto] = []

    def start(**kwargs: object) -> Mosquitto:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed")
        work = tmp_path / f"broker{len(started)}"
        work.mkdir()
        b = Mosquitto(work, **kwargs)  # type: ignore[arg-type]
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


# --- watching the broker ----------------------------------------------------------------------


@dataclass
class Message:
    topic: str
    payload: bytes
    at: float  # time.monotonic() when received


@dataclass
class Watcher:
    """A client that records everything under a topic filter (as Home Assistant would see it),
    its network loop in a thread of its own."""

    host: str
    port: int
    topic_filter: str
    username: str | None = None
    password: str | None = None
    qos: int = 1
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"ew-test-{uuid.uuid4().hex}")
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic_filter, qos=self.qos)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._received
        self.client.connect(self.host, self.port)
        self.quick_ack()
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError("the watcher could not subscribe")

    def quick_ack(self) -> None:
        """Acknowledge what arrives at once. A broker that sends with Nagle's algorithm (as
        Mosquitto does unless set_tcp_nodelay) holds a small message back until the previous
        one is acknowledged, and Linux delays an ACK up to 40 ms: every round trip of a test
        would wait that long. TCP_QUICKACK lasts only until the next read, so it is set again
        after each."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def _received(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.quick_ack()
        with self.lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), time.monotonic()))

    def of(self, topic: str, since: float = 0.0) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic and m.at >= since]

    def latest(self, topic: str) -> bytes | None:
        got = self.of(topic)
        return got[-1].payload if got else None

    def close(self) -> None:
        self.client.disconnect()  # wakes the network thread at once
        self.client.loop_stop()


def connack(host: str, port: int, username: str | None = None, password: str | None = None) -> str:
    """The broker's answer to a CONNECT with this login: "Success", "Not authorized", ..."""
    answers: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, f"ew-test-{uuid.uuid4().hex}")
    if username:
        client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(str(reason))
    client.connect(host, port)
    try:
        wait_until(lambda: (client.loop(0.05), answers)[1], 10, 0, "CONNACK")
    finally:
        client.disconnect()
    return answers[0]


def retained(
    host: str,
    port: int,
    topic_filter: str,
    username: str | None = None,
    password: str | None = None,
    empty: bool = False,
) -> dict[str, bytes]:
    """What a new subscriber gets: the retained messages under a filter, all of them (a marker
    published after subscribing comes back after the last retained one; all at QoS 0). With
    empty=True they are deleted too, and gone when this returns (a second marker comes back
    after the broker has handled the deletions, which it handles in order)."""
    w = Watcher(host, port, topic_filter, username, password, qos=0)

    def sync() -> None:
        marker = f"ew-test-marker/{uuid.uuid4().hex}"
        w.client.subscribe(marker, qos=0)
        w.client.publish(marker, b"x", qos=0)
        wait_until(lambda: w.of(marker), 10, 0.001, "the marker to come back")

    try:
        sync()
        with w.lock:
            found = {
                m.topic: m.payload for m in w.messages if not m.topic.startswith("ew-test-marker/")
            }
        if empty and found:
            for topic in found:
                w.client.publish(topic, b"", qos=0, retain=True)
            sync()
        return found
    finally:
        w.close()


@dataclass
class Space:
    """A test's own part of a broker: discovery prefix and topic prefix under a unique root."""

    host: str
    port: int
    root: str
    username: str | None = None
    password: str | None = None

    @property
    def discovery_prefix(self) -> str:
        return f"{self.root}/ha"

    @property
    def topic_prefix(self) -> str:
        return f"{self.root}/ew"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MQTT_HOST": self.host,
            "MQTT_PORT": str(self.port),
            "MQTT_DISCOVERY_PREFIX": self.discovery_prefix,
            "MQTT_TOPIC_PREFIX": self.topic_prefix,
            **extra,
        }

    def layout(self, installation: str) -> ha_discovery.Layout:
        return ha_discovery.Layout(self.discovery_prefix, self.topic_prefix, installation)

    def watch(self) -> Watcher:
        return Watcher(self.host, self.port, f"{self.root}/#", self.username, self.password)

    def retained(self) -> dict[str, bytes]:
        return retained(self.host, self.port, f"{self.root}/#", self.username, self.password)

    def empty(self) -> None:
        """Delete what the test left retained (the shared broker keeps it on disk)."""
        retained(self.host, self.port, f"{self.root}/#", self.username, self.password, empty=True)


@pytest.fixture
def space(mqtt_broker: tuple[str, int]) -> Iterator[Space]:
    """A part of the shared broker of this test's own, emptied at the end."""
    s = Space(*mqtt_broker, f"ew-test/{uuid.uuid4().hex[:12]}")
    yield s
    s.empty()
