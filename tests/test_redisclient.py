"""Our Redis client against the run's real redis-server: every kind of reply, pipelines and
transactions, scripts, pub/sub, and the failure rules the programs' exactness rests on (see
energy_worker/redisclient.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import free_port

from energy_worker import redisclient
from energy_worker.config import RedisSettings
from energy_worker.redisclient import (
    AuthenticationError,
    ConnectionFailed,
    Redis,
    ResponseError,
    TimedOut,
    pack,
)
from helpers import wait_until
from tcpproxy import TcpProxy


def client_of(redis_db: RedisSettings, **options: Any) -> Redis:
    return Redis(host=redis_db.host, port=redis_db.port, db=redis_db.db, **options)


@pytest.mark.parametrize(
    ("args", "wire"),
    [
        (["GET", "k"], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        (
            ["SET", b"k\r\n", 12, 0.5],
            b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$3\r\n0.5\r\n",
        ),
        (["SET", "kø", ""], b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xb8\r\n$0\r\n\r\n"),
    ],
)
def test_commands_are_packed_as_bulk_strings(args, wire):
    assert pack(args) == wire


def test_a_bool_is_refused_rather_than_sent_as_true():
    with pytest.raises(TypeError):
        pack(["SET", "k", True])


def test_every_kind_of_reply(r):
    assert r.ping() is True  # simple string
    assert r.set("k", b"a\r\nb\x00") is True
    assert r.get("k") == b"a\r\nb\x00"  # bulk string, binary safe
    assert r.get("missing") is None  # null bulk string
    assert r.rpush("l", "1", "", "3") == 3  # integer
    assert r.lrange("l", 0, -1) == [b"1", b"", b"3"]  # array
    assert r.lrange("missing", 0, -1) == []
    assert r.blmove("missing", "l2", 0.05, "LEFT", "RIGHT") is None  # null array (timeout)
    nested = r.execute_command("EVAL", "return {1, {'a', {}}, 'b'}", 0)
    assert nested == [1, [b"a", []], b"b"]


def test_a_reply_larger_than_one_read_comes_whole(r):
    big = bytes(range(256)) * (3 * redisclient.RECV_BYTES // 256 + 7)
    r.set("big", big)
    r.rpush("bigs", big, big)
    assert r.get("big") == big
    assert r.lrange("bigs", 0, -1) == [big, big]


def test_an_error_answer_raises_and_the_connection_stays_usable(r):
    r.rpush("list", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        r.get("list")
    with pytest.raises(ResponseError, match="unknown command"):
        r.execute_command("NO-SUCH-COMMAND")
    assert r.llen("list") == 1


def test_set_only_if_absent(r):
    assert r.set("k", "1", nx=True) is True
    assert r.set("k", "2", nx=True) is False
    assert r.get("k") == b"1"


def test_config_get_gives_one_setting_or_nothing(r):
    assert r.config_get("maxmemory-policy") == {
        "maxmemory-policy": r.execute_command("CONFIG", "GET", "maxmemory-policy")[1].decode()
    }
    assert r.config_get("no-such-setting") == {}


def test_scan_iter_finds_every_key_once(r):
    names = {f"k{i}".encode() for i in range(2500)}
    for chunk in range(0, 2500, 500):
        r.execute_command("MSET", *(x for n in range(chunk, chunk + 500) for x in (f"k{n}", 1)))
    found = list(r.scan_iter(count=100))
    assert sorted(found) == sorted(names)


def test_a_pipeline_answers_each_command_in_order(r):
    pipe = r.pipeline(transaction=False)
    pipe.set("a", "1")
    pipe.incr("a")
    pipe.get("a")
    pipe.lrange("none", 0, -1)
    assert pipe.execute() == [b"OK", 2, b"2", []]
    assert pipe.execute() == []  # emptied


def test_a_transaction_runs_as_one_and_an_error_in_it_raises(r):
    pipe = r.pipeline(transaction=True)
    pipe.rpush("l", "a")
    pipe.llen("l")
    assert pipe.execute() == [1, 1]
    pipe.set("s", "x")
    pipe.llen("s")  # WRONGTYPE at run time: the others still ran (Redis has no rollback)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        pipe.execute()
    assert r.get("s") == b"x"
    pipe.execute_command("NO-SUCH-COMMAND")  # refused while queued: nothing runs
    pipe.set("t", "y")
    with pytest.raises(ResponseError, match="transaction aborted"):
        pipe.execute()
    assert r.get("t") is None
    assert r.ping()


def test_a_script_runs_by_its_digest_and_is_sent_again_when_the_server_forgot_it(r):
    script = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script(keys=["n"], args=[2]) == 2
    r.execute_command("SCRIPT", "FLUSH")  # as after a restart
    assert script(keys=["n"], args=[3]) == 5
    for transaction in (True, False):
        r.execute_command("SCRIPT", "FLUSH")
        pipe = r.pipeline(transaction=transaction)
        script(keys=["n"], args=[1], client=pipe)
        script(keys=["n"], args=[1], client=pipe)
        pipe.get("n")
        assert pipe.execute()[-1] == (b"7" if transaction else b"9")


def test_a_script_error_raises_without_running_it_twice(r):
    script = r.register_script("redis.call('INCR', KEYS[1]); return redis.call('LLEN', KEYS[2])")
    r.set("s", "x")
    with pytest.raises(ResponseError):
        script(keys=["n", "s"])
    assert r.get("n") == b"1"


def test_a_connection_the_server_closed_while_idle_is_replaced_unnoticed(r, redis_db):
    client = client_of(redis_db)
    r.execute_command("CLIENT", "KILL", "ID", client.execute_command("CLIENT", "ID"))
    assert client.incr("counter") == 1  # not lost, not counted twice
    assert r.get("counter") == b"1"
    client.close()


def test_a_command_already_written_is_not_sent_again_when_the_connection_drops(r, redis_db):
    """A retried write could run twice (an LTRIM that acknowledges items twice loses pulses).
    The client is blocked in BLMOVE when its connection drops: it raises, and once the
    network is back it is not found blocked again."""
    proxy = TcpProxy(redis_db.host, redis_db.port)
    client = Redis(host="127.0.0.1", port=proxy.port, db=redis_db.db, retries=2, timeout=30)
    client.execute_command("CLIENT", "SETNAME", "ew-blocked")
    outcome: list[object] = []

    def block() -> None:
        try:
            outcome.append(client.blmove("nothing", "there", 20, "LEFT", "RIGHT"))
        except ConnectionFailed as exc:
            outcome.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    try:
        wait_until(lambda: blocked(r, "ew-blocked"), 5, what="the client blocked in BLMOVE")
        proxy.cut()
        proxy.restore()
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(outcome[0], ConnectionFailed)
        assert not blocked(r, "ew-blocked")
    finally:
        proxy.cut()
        proxy.close()
        thread.join(20)
        client.close()


def blocked(r: Redis, name: str) -> bool:
    clients = r.execute_command("CLIENT", "LIST").decode().splitlines()
    return any(f"name={name} " in c and "cmd=blmove" in c for c in clients)


def test_no_server_raises_after_the_quick_retries():
    client = Redis(port=free_port(), retries=2, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="Error connecting"):
        client.get("k")
    assert 0.1 <= time.monotonic() - started < 5  # two waits of 0.05 s and 0.1 s


def test_a_reply_slower_than_the_timeout_raises_and_cannot_answer_the_next_command(r, redis_db):
    client = client_of(redis_db, timeout=0.2)
    with pytest.raises(TimedOut):
        client.blmove("nothing", "there", 1, "LEFT", "RIGHT")
    r.rpush("nothing", "late")  # BLMOVE is gone with its connection: nothing moves
    assert client.lrange("nothing", 0, -1) == [b"late"]
    assert client.llen("there") == 0
    client.close()


def test_a_user_and_password_are_sent_and_a_wrong_one_is_refused(r, redis_db):
    user = "ew-client-test"
    r.execute_command("ACL", "SETUSER", user, "on", ">right", "~*", "&*", "+@all")
    try:
        assert client_of(redis_db, username=user, password="right").ping()
        with pytest.raises(AuthenticationError):
            client_of(redis_db, username=user, password="wrong").ping()
    finally:
        r.execute_command("ACL", "DELUSER", user)


def test_the_database_number_is_selected(r, redis_db):
    other = Redis(host=redis_db.host, port=redis_db.port, db=(redis_db.db + 1) % 16)
    other.set("elsewhere", "1")
    try:
        assert r.get("elsewhere") is None
    finally:
        other.delete("elsewhere")
        other.close()


def test_pubsub_gives_messages_and_waits_no_longer_than_asked(r, redis_db):
    pubsub = client_of(redis_db).pubsub()
    pubsub.subscribe("ew-a", "ew-b")
    assert pubsub.subscribed
    started = time.monotonic()
    assert pubsub.get_message(timeout=0.2) is None  # the confirmations are skipped
    assert 0.15 <= time.monotonic() - started < 2
    wait_until(lambda: r.execute_command("PUBLISH", "ew-b", "hello") == 1, 5)
    message = pubsub.get_message(timeout=5)
    assert message is not None
    assert (message.channel, message.data) == (b"ew-b", b"hello")
    assert pubsub.connection.sock is not None
    host, port = pubsub.connection.sock.getsockname()[:2]
    r.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
    with pytest.raises(ConnectionFailed):
        pubsub.get_message(timeout=5)
    pubsub.close()
    assert not pubsub.subscribed


class FakeServer:
    """A real TCP server that answers every command with the same bytes (a command: each "*"
    read, as the tests send no other), and counts connections: what a busy or a wrong server
    says, which the run's redis-server cannot be made to say."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while chunk := conn.recv(65536):
                    conn.sendall(self.answer * chunk.count(b"*"))

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def fake_server() -> Iterator[Callable[[bytes], FakeServer]]:
    servers: list[FakeServer] = []

    def start(answer: bytes) -> FakeServer:
        servers.append(FakeServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_an_answer_that_is_not_resp_fails_the_connection(fake_server):
    server = fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    client = Redis(port=server.port, timeout=5)
    with pytest.raises(ConnectionFailed, match="Protocol error"):
        client.get("k")
    assert not client.connection.connected


def test_a_server_still_loading_its_data_is_an_outage_not_an_answer(fake_server):
    """A restarted Redis answers LOADING until its data is back: nothing ran. Callers must
    wait and try again (an outage), not take it for a refusal: not for a wrong password, nor
    for CONFIG refused (the router would give up keyspace notifications for good)."""
    server = fake_server(b"-LOADING Redis is loading the dataset in memory\r\n")
    client = Redis(port=server.port, timeout=5, password="secret", retries=2)
    with pytest.raises(ConnectionFailed, match="LOADING") as raised:
        client.config_get("notify-keyspace-events")
    assert isinstance(raised.value, redisclient.Loading)
    assert server.connections == 3  # nothing ran: tried again, quickly, as a failed connect
    other = Redis(port=server.port, timeout=5)
    pipe = other.pipeline(transaction=True)
    pipe.llen("l")
    with pytest.raises(redisclient.Loading):
        pipe.execute()
    other.close()


def test_the_password_is_not_in_the_settings_shown():
    settings = redisclient.Settings(username="u", password="s3cret-pw")
    assert "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in repr(Redis(settings).settings)
