"""The webhook client against a real local HTTP server: exact request lines, failures."""

from __future__ import annotations

import socket
import ssl
import time
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import trustme

from energy_worker.programs.pusher.sheet_client import SheetClient
from energy_worker.programs.pusher.sheet_format import data_string, fields, push_url, shown_url
from sheet_server import HANG, Reply, request_line, sheet_server

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
    hook = SheetClient(url)
    for text in (repr(hook), hook.shown):
        assert "SECRETID" not in text and "s3cret" not in text and "pw" not in text


@pytest.mark.parametrize("bad", ["", "script.google.com/x", "ftp://h/x", "http://", "http://h:x/"])
def test_a_bad_url_is_refused_without_showing_it(bad):
    with pytest.raises(ValueError) as info:
        SheetClient(bad)
    assert str(info.value).startswith("GOOGLE_WEBHOOK_URL")  # a fixed text, not the URL


def test_the_request_line_is_exact():
    with sheet_server() as server:
        answer = SheetClient(server.base + PATH).send("279.97,752.04,260.03")
        assert answer.ok and answer.status == 200
        assert server.got() == [
            request_line(PATH + "?function=updateSheet&dataString=279.97,752.04,260.03")
        ]


def test_a_url_with_a_query_string_gets_ampersand_function():
    with sheet_server() as server:
        SheetClient(server.base + PATH + "?token=abc").send("1.00,2.00")
        assert server.got() == [
            request_line(PATH + "?token=abc&function=updateSheet&dataString=1.00,2.00")
        ]


def test_a_500_is_a_failure_with_its_status():
    with sheet_server() as server:
        server.script = [500]
        answer = SheetClient(server.base + PATH).send("1.00")
        assert not answer.ok and answer.status == 500
        assert answer.describe() == "HTTP 500, answered 'ok'"


def test_a_hanging_webhook_costs_at_most_the_timeout():
    with sheet_server() as server:
        server.script = [HANG]
        hook = SheetClient(server.base + PATH + "?token=s3cret", timeout=0.5)
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
    answer = SheetClient(f"http://127.0.0.1:{port}{PATH}?token=s3cret", timeout=2).send("1.00")
    assert answer.status is None
    assert answer.error == "connection failed"
    assert "s3cret" not in answer.describe()


def test_a_push_carries_its_id_day_instant_and_meters_encoded():
    at = datetime(2024, 6, 2, tzinfo=ZoneInfo("Europe/Copenhagen"))
    extra = fields("a1:day:2024-06-01", date(2024, 6, 1), at, [(1, "House"), (3, "A, b & c+d")])
    assert extra == (
        "id=a1:day:2024-06-01&day=2024-06-01&at=2024-06-02T00:00:00%2B02:00&meters=1,3"
        "&name1=House&name3=A,%20b%20%26%20c%2Bd"
    )
    assert push_url("https://h/p?k=1", "1.00,2.00", extra) == (
        f"https://h/p?k=1&function=updateSheet&dataString=1.00,2.00&{extra}"
    )
    # a push recorded before its meters were: no meters, no names
    assert fields("x", date(2024, 6, 1), at, None) == (
        "id=x&day=2024-06-01&at=2024-06-02T00:00:00%2B02:00"
    )


# --- what an answer means (sheet_answer.py), each case against the local server -----------

SIGN_IN = (
    "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
    "<title>Sign in - Google Accounts</title></head><body>Sign in</body></html>"
)


@pytest.mark.parametrize(
    ("reply", "describe"),
    [
        (
            Reply(200, "ERROR: the sheet is busy, try again\nat line 3"),
            "HTTP 200, the script failed: 'ERROR: the sheet is busy, try again'",
        ),
        (
            Reply(200, SIGN_IN, "text/html; charset=utf-8"),
            "HTTP 200, an HTML page ('Sign in - "
            "Google Accounts'), not the script's answer: is the web app deployed with access for "
            "Anyone?",
        ),
        (
            Reply(200, "\n  <html><body>oops</body></html>", "text/plain"),
            "HTTP 200, an HTML "
            "page ('<html><body>oops</body></html>'), not the script's answer: is the web app "
            "deployed with access for Anyone?",
        ),
        (
            Reply(503, "Service Unavailable\nretry later"),
            "HTTP 503, answered 'Service Unavailable'",
        ),
        (Reply(404, ""), "HTTP 404, answered nothing"),
        (Reply(500, "x" * 500), "HTTP 500, answered '" + "x" * 119 + "…'"),
    ],
)
def test_a_failed_push_is_told_by_the_answers_first_line(reply, describe):
    with sheet_server() as server:
        server.script = [reply]
        answer = SheetClient(server.base + PATH).send("1.00")
    assert not answer.ok
    assert answer.describe() == describe


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, "OK"),
        Reply(200, ""),
        Reply(201, '{"result": "success"}', "application/json"),
        Reply(204, ""),
        Reply(200, "error? no: ERROR comes first only in a failure"),
    ],
)
def test_any_other_2xx_answer_is_a_success(reply):
    # an original stack's endpoint may answer anything
    with sheet_server() as server:
        server.script = [reply]
        answer = SheetClient(server.base + PATH).send("1.00")
    assert answer.ok and answer.describe() == f"HTTP {reply.status}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


@pytest.fixture
def trusting(ca: trustme.CA, tmp_path, monkeypatch):
    """The client trusts the test CA, through the environment as requests reads it."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return ca


def test_a_redirect_to_https_is_followed(trusting):
    with sheet_server(tls=tls_context(trusting)) as target, sheet_server() as first:
        first.script = [Reply(302, "", headers={"Location": target.base + "/echo?user_content"})]
        answer = SheetClient(first.base + PATH + "?token=abc").send("1.00")
        assert answer.ok, answer.describe()
        assert target.got() == [request_line("/echo?user_content")]


@pytest.mark.parametrize("scheme", ["http", "ftp"])
def test_a_redirect_to_anything_but_https_is_not_followed(scheme):
    with sheet_server() as target, sheet_server() as first:
        location = f"{scheme}://127.0.0.1:{target.port}/leak?token=abc"
        first.script = [Reply(302, "", headers={"Location": location})]
        answer = SheetClient(first.base + PATH).send("1.00")
        assert not answer.ok and target.got() == []
        assert answer.describe() == (
            f"HTTP 302, a redirect to {scheme}://127.0.0.1:{target.port} is not followed "
            "(https only)"
        )


def test_a_certificate_error_is_reported_as_a_tls_error(ca):
    # the server's certificate comes from a CA the client does not trust
    with sheet_server(tls=tls_context(ca)) as server:
        answer = SheetClient(server.base + PATH + "?token=s3cret", timeout=5).send("1.00")
        assert server.got() == []
    assert answer.status is None and not answer.ok
    assert answer.describe().startswith("TLS error: certificate not accepted ("), answer
    assert "s3cret" not in answer.describe() and PATH not in answer.describe()


def test_the_proxy_of_the_environment_is_used_and_no_proxy_is_obeyed(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    with sheet_server() as proxy, sheet_server() as sheet:
        monkeypatch.setenv("HTTP_PROXY", proxy.base)
        monkeypatch.setenv("HTTPS_PROXY", proxy.base)
        assert SheetClient("http://sheet.invalid" + PATH).send("1.00").ok
        proxy.script = [502]  # no tunnel: the push fails, and says so
        answer = SheetClient("https://sheet.invalid" + PATH).send("2.00")
        assert not answer.ok and "proxy" in answer.describe()
        assert proxy.got() == [
            f"GET http://sheet.invalid{PATH}?function=updateSheet&dataString=1.00 HTTP/1.1",
            "CONNECT sheet.invalid:443 HTTP/1.0",  # as urllib3 asks
        ]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert SheetClient(sheet.base + PATH).send("3.00").ok
        assert len(proxy.got()) == 2 and len(sheet.got()) == 1
