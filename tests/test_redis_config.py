"""redis-py as our programs configure it (energy_worker/adapters/redis_client.py), against the
run's real redis-server: the rules exactly-once rests on, where redis-py's defaults would break
them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import redis

from energy_worker.adapters.config import RedisSettings
from energy_worker.adapters.redis_client import connect_once, connect_redis
from energy_worker.programs.router.notifications import Notifications
from helpers import wait_until
from tcpproxy import TcpProxy


def blocked(r: redis.Redis, name: str) -> bool:
    clients = r.client_list()
    return any(c["name"] == name and c["cmd"] == "blmove" for c in clients)


def test_a_command_already_written_is_not_sent_again_when_the_connection_drops(
    r: redis.Redis, redis_db: RedisSettings
):
    """redis-py retries a failed command by default, after reconnecting: a command that had
    reached the server would run twice (an LTRIM that acknowledges items twice loses pulses).
    Here the client is blocked in BLMOVE when its connection drops: it raises, and once the
    network is back it is not found blocked again."""
    proxy = TcpProxy(redis_db.host, redis_db.port)
    client = connect_redis(replace(redis_db, host="127.0.0.1", port=proxy.port), 30)
    client.client_setname("ew-blocked")
    outcome: list[object] = []

    def block() -> None:
        try:
            outcome.append(client.blmove("nothing", "there", 20, "LEFT", "RIGHT"))
        except redis.ConnectionError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    try:
        wait_until(lambda: blocked(r, "ew-blocked"), 5, what="the client blocked in BLMOVE")
        proxy.cut()
        proxy.restore()  # a retry would find the network back at once
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(outcome[0], redis.ConnectionError)
        assert not blocked(r, "ew-blocked")
        r.rpush("nothing", "late")  # no BLMOVE of ours is waiting for it
        assert r.lrange("nothing", 0, -1) == [b"late"]
    finally:
        proxy.cut()
        proxy.close()
        thread.join(30)
        client.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_unnoticed(
    r: redis.Redis, redis_db: RedisSettings
):
    """What redis-py still does by itself is safe: it finds the closed connection before
    writing on it."""
    client = connect_redis(redis_db)
    r.client_kill_filter(_id=str(client.client_id()))
    assert client.incr("counter") == 1  # not lost, not counted twice
    assert r.get("counter") == b"1"
    client.close()


class LoadingServer:
    """A real TCP server that answers every command as a Redis still loading its data does:
    what the run's redis-server cannot be made to say on demand. Counts connections."""

    ANSWER = b"-LOADING Redis is loading the dataset in memory\r\n"

    def __init__(self) -> None:
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
                    conn.sendall(self.ANSWER * chunk.count(b"*"))  # one per command

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def loading() -> Iterator[Callable[..., redis.Redis]]:
    server = LoadingServer()
    clients: list[redis.Redis] = []

    def client(**settings: str) -> redis.Redis:
        clients.append(connect_redis(RedisSettings("127.0.0.1", server.port, 0, **settings)))
        return clients[-1]

    client.server = server  # type: ignore[attr-defined]
    yield client
    for made in clients:
        made.close()
    server.close()


def test_a_server_still_loading_its_data_is_an_outage_not_an_answer(loading):
    """A restarted Redis answers LOADING until its data is back: nothing ran. It is a
    ConnectionError (an outage, waited out), not a refusal: not a wrong password, nor CONFIG
    refused (the router would give up keyspace notifications for good), nor, inside MULTI, a
    transaction aborted by a bad command."""
    client = loading(password="secret")
    with pytest.raises(redis.BusyLoadingError):
        client.get("k")
    assert loading.server.connections == 1  # not retried behind our back either
    notifications = Notifications(loading())
    with pytest.raises(redis.ConnectionError):
        notifications.enable()
    assert notifications.working is None
    pipe = loading().pipeline(transaction=True)
    pipe.llen("l")
    with pytest.raises(redis.BusyLoadingError):
        pipe.execute()


def test_a_wrong_database_number_is_refused_by_the_server(redis_db: RedisSettings):
    client = connect_once(replace(redis_db, db=100_000), 5)
    with pytest.raises(redis.ResponseError, match=r"DB index is out of range|invalid DB index"):
        client.ping()
    client.close()
