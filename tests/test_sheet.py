"""The webhook client against a real local HTTP server: exact request lines, failures."""

from __future__ import annotations

import socket
import time
from decimal import Decimal

import pytest

from energy_worker.sheet import data_string, push_url, shown_url
from energy_worker.webhook import Webhook
from sheet_server import HANG, request_line, sheet_server

PATH = "/energyRegistrations/updateEnergyRegistrations"


def test_data_string_is_two_decimals_in_order_with_literal_commas():
    readings = [
        Decimal("279.97"),
        Decimal("752.040"),
        Decimal("260.025"),  # half a cent rounds up
        Decimal("441.2149"),
        Decimal("806.67"),
        Decimal("1.08"),
        Decimal("3362.79"),
    ]
    assert data_string(readings) == "279.97,752.04,260.03,441.21,806.67,1.08,3362.79"


def test_data_string_never_uses_exponents_and_shows_unknown_as_zero():
    assert data_string([Decimal("1E+3"), Decimal("0E-8"), None, Decimal("0.001")]) == (
        "1000.00,0.00,0.00,0.00"
    )


def test_url_gets_its_query_the_right_way():
    assert push_url("http://h/p", "1.00,2.00") == (
        "http://h/p?function=updateSheet&dataString=1.00,2.00"
    )
    assert push_url("https://h/p?key=abc", "1.00") == (
        "https://h/p?key=abc&function=updateSheet&dataString=1.00"
    )
    assert push_url("https://h/p?", "1.00") == "https://h/p?function=updateSheet&dataString=1.00"
    assert push_url("https://h/p?a=1&", "1.00") == (
        "https://h/p?a=1&function=updateSheet&dataString=1.00"
    )
    assert push_url("https://h/p#frag", "1.00") == (
        "https://h/p?function=updateSheet&dataString=1.00"
    )


def test_a_shown_url_keeps_no_secret():
    url = "https://user:pw@script.google.com:8443/macros/s/SECRETID/exec?token=s3cret"
    assert shown_url(url) == "https://script.google.com:8443"
    hook = Webhook(url)
    for text in (repr(hook), hook.shown):
        assert "SECRETID" not in text and "s3cret" not in text and "pw" not in text


@pytest.mark.parametrize("bad", ["", "script.google.com/x", "ftp://h/x", "http://", "http://h:x/"])
def test_a_bad_url_is_refused_without_showing_it(bad):
    with pytest.raises(ValueError) as info:
        Webhook(bad)
    assert str(info.value).startswith("GOOGLE_WEBHOOK_URL")  # a fixed text, not the URL


def test_the_request_line_is_exact():
    with sheet_server() as server:
        answer = Webhook(server.base + PATH).send("279.97,752.04,260.03")
        assert answer.ok and answer.status == 200
        assert server.got() == [
            request_line(PATH + "?function=updateSheet&dataString=279.97,752.04,260.03")
        ]


def test_a_url_with_a_query_string_gets_ampersand_function():
    with sheet_server() as server:
        Webhook(server.base + PATH + "?token=abc").send("1.00,2.00")
        assert server.got() == [
            request_line(PATH + "?token=abc&function=updateSheet&dataString=1.00,2.00")
        ]


def test_a_500_is_a_failure_with_its_status():
    with sheet_server() as server:
        server.script = [500]
        answer = Webhook(server.base + PATH).send("1.00")
        assert not answer.ok and answer.status == 500
        assert answer.describe() == "HTTP 500"


def test_a_hanging_webhook_costs_at_most_the_timeout():
    with sheet_server() as server:
        server.script = [HANG]
        hook = Webhook(server.base + PATH + "?token=s3cret", timeout=0.5)
        started = time.monotonic()
        answer = hook.send("1.00")
        elapsed = time.monotonic() - started
        assert answer.status is None and not answer.ok
        assert answer.error == "no answer within 0.5 s"
        assert elapsed < 3
        # and the next call, answered, works on a fresh connection
        assert hook.send("2.00").ok
        assert server.got()[-1] == request_line(
            PATH + "?token=s3cret&function=updateSheet&dataString=2.00"
        )


def test_connection_refused_is_a_failure_without_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = Webhook(f"http://127.0.0.1:{port}{PATH}?token=s3cret", timeout=2).send("1.00")
    assert answer.status is None
    assert answer.error == "connection failed"
    assert "s3cret" not in answer.describe()
