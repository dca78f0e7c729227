"""Backoff for a lost dependency (services/energy_worker/adapters/outage.py): one line when it goes,
one when it is back, a wait that doubles up to its cap (the sleep injected: nothing sleeps), a
refusal said once, and errors described without a secret."""

from __future__ import annotations

import logging

import pg8000.native
import pytest
import redis
from conftest import free_port
from redis.backoff import NoBackoff
from redis.retry import Retry

from energy_worker.adapters import config, postgres
from energy_worker.adapters.outage import Outage, describe_error

LOG = logging.getLogger("energy_worker.tests.outage")
PASSWORD = "s3cret-Pw_42"


class Sleeps(list[float]):
    """The injected sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def outage(sleeps: Sleeps) -> Outage:
    return Outage("PostgreSQL", LOG, first_delay=0.25, max_delay=3.0, sleep=sleeps)


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name and r.levelno >= level]


def test_down_once_and_back_once_however_many_attempts(outage: Outage, caplog, sleeps: Sleeps):
    caplog.set_level(logging.DEBUG, logger=LOG.name)  # each attempt is a debug line only
    assert not outage.down
    for _ in range(5):
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
    assert outage.down
    outage.succeeded()
    outage.succeeded()  # each later success is no news
    assert not outage.down
    said = lines(caplog)
    assert len(said) == 2
    assert said[0] == (
        "PostgreSQL unavailable (ConnectionRefusedError: [Errno 111] Connection refused); "
        "retrying with backoff"
    )
    assert said[1].startswith("PostgreSQL is back after ") and said[1].endswith(" s")
    assert [r.levelname for r in caplog.records if r.name == LOG.name].count("DEBUG") == 4
    assert len(sleeps) == 5


def test_a_second_outage_is_said_again(outage: Outage, caplog):
    outage.failed(OSError("first"))
    outage.succeeded()
    outage.failed(OSError("second"))
    outage.succeeded()
    said = lines(caplog, logging.WARNING)
    assert len(said) == 4
    assert "first" in said[0] and "second" in said[2]


def test_the_wait_doubles_up_to_its_cap_and_starts_again_after_a_success(
    outage: Outage, sleeps: Sleeps
):
    for _ in range(7):
        outage.failed(OSError("down"))
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    outage.succeeded()
    sleeps.clear()
    outage.failed(OSError("down"))
    outage.failed(OSError("down"))
    assert sleeps == [0.25, 0.5]


def test_the_defaults_wait_from_a_fifth_to_five_seconds(sleeps: Sleeps):
    outage = Outage("Redis", LOG, sleep=sleeps)
    for _ in range(8):
        outage.failed(OSError("down"))
    assert sleeps[0] == 0.2 and max(sleeps) == 5.0 and sleeps[-1] == 5.0


def refusal(state: str, message: str) -> pg8000.native.DatabaseError:
    """A PostgreSQL error as pg8000 raises it: the server's fields as a dict."""
    return pg8000.native.DatabaseError({"S": "ERROR", "C": state, "M": message})


def test_a_refusal_is_said_once_per_distinct_refusal(outage: Outage, caplog, sleeps: Sleeps):
    full = refusal("53100", "could not extend file: No space left on device")
    for _ in range(3):
        outage.refused(full)
    outage.refused(refusal("42P01", 'relation "consumption" does not exist'))
    outage.refused(refusal("42P01", 'relation "consumption" does not exist'))
    outage.refused(full)  # back to the first: a change again, so said again
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "PostgreSQL refused a statement (DatabaseError: 53100 could not extend file: No space "
        "left on device); retrying with backoff",
        'PostgreSQL refused a statement (DatabaseError: 42P01 relation "consumption" does not '
        "exist); retrying with backoff",
        "PostgreSQL refused a statement (DatabaseError: 53100 could not extend file: No space "
        "left on device); retrying with backoff",
    ]
    assert outage.down
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]  # waited out as an outage


def test_after_a_success_the_same_refusal_is_said_again(outage: Outage, caplog):
    outage.refused(refusal("53100", "disk full"))
    outage.succeeded()
    outage.refused(refusal("53100", "disk full"))
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_waiting_on_a_lock_is_said_once_and_tried_at_a_steady_pace(
    outage: Outage, caplog, sleeps: Sleeps
):
    for _ in range(4):
        outage.waiting(RuntimeError("another pusher holds the lock"), every=1.5)
    assert sleeps == [1.5] * 4
    assert lines(caplog) == [
        "PostgreSQL: RuntimeError: another pusher holds the lock; trying again every 1.5 s"
    ]
    outage.succeeded()
    assert len(lines(caplog)) == 2


# --- describe_error -----------------------------------------------------------------------------


def test_a_postgresql_error_shows_its_sqlstate_and_message():
    assert describe_error(refusal("23505", "duplicate key")) == "DatabaseError: 23505 duplicate key"
    no_state = pg8000.native.DatabaseError({"M": "odd"})
    assert describe_error(no_state) == "DatabaseError: ? odd"


def test_only_the_first_line_of_at_most_200_characters():
    assert describe_error(ValueError("first\nsecond\nthird")) == "ValueError: first"
    assert len(describe_error(ValueError("x" * 10_000))) == 200
    assert describe_error(ValueError()) == "ValueError"
    assert describe_error(ValueError("")) == "ValueError"


@pytest.mark.parametrize(
    "message",
    [
        f"could not connect to postgresql://energy:{PASSWORD}@db:5432/energy",
        f"redis://:{PASSWORD}@redis-db:6379/0 refused",
        f"mqtts://ha-user:{PASSWORD}@broker:8883 unreachable",
        f"host=db port=5432 user=energy password={PASSWORD} dbname=energy: timeout",
        f"bad DSN: password='{PASSWORD} with spaces' host=db",
        f'{{"user": "energy", "password": "{PASSWORD}"}}',
        f"PASS={PASSWORD}",
    ],
)
def test_a_password_in_a_url_or_a_dsn_never_reaches_the_line(message: str):
    for exc in (ValueError(message), refusal("08001", message), OSError(message + "\nmore")):
        text = describe_error(exc)
        assert PASSWORD not in text and PASSWORD[:6] not in text, text
        assert "***" in text


def test_a_password_cut_by_the_200_characters_is_masked_still():
    text = describe_error(ValueError("x" * 170 + f"postgresql://u:{PASSWORD}@db/energy"))
    assert len(text) == 200 and PASSWORD[:4] not in text


def test_an_error_without_a_password_is_left_as_it_is():
    message = 'password authentication failed for user "energy" (see http://db:8080/help)'
    assert describe_error(refusal("28P01", message)) == f"DatabaseError: 28P01 {message}"


def test_the_drivers_own_connection_errors_carry_no_password():
    port = free_port()  # nothing listens there
    settings = config.PostgresSettings("127.0.0.1", port, "energy", "energy", PASSWORD)
    with pytest.raises(postgres.ERRORS) as pg_error:
        postgres.connect(settings, "outage test", timeout=2)
    client = redis.Redis(
        port=port, password=PASSWORD, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.ConnectionError) as redis_error:
        client.ping()
    for exc in (pg_error.value, redis_error.value):
        text = describe_error(exc)
        assert text and PASSWORD not in text, text
