"""The Google Sheet push's format, pure (docs/DOMAIN.md, "The Google Sheet push").

`GET <GOOGLE_WEBHOOK_URL>?function=updateSheet&dataString=279.97,752.04,...`: each meter's kWh
to two decimals, in meter order, commas literal. The URL is a capability (an Apps Script URL's
path is its key, and a query string may hold a token), so a URL is only ever shown as its
scheme and host.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

FUNCTION = "updateSheet"
CENT = Decimal("0.01")


def kwh_text(kwh: Decimal | None) -> str:
    """A reading to two decimals; a meter without any reading yet shows 0.00, as meter_status
    (whose kWh starts at 0) would."""
    value = (kwh if kwh is not None else Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{value:f}"


def data_string(readings: Sequence[Decimal | None]) -> str:
    return ",".join(kwh_text(kwh) for kwh in readings)


def push_url(base: str, data: str) -> str:
    """The request URL: a base with a query string of its own gets `&function=...`."""
    base, _, _fragment = base.partition("#")  # a fragment is never sent anyway
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return f"{base}{separator}function={FUNCTION}&dataString={data}"


def shown_url(url: str) -> str:
    """What a log line may say about a URL: scheme and host only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme or '?'}://{host}{port}"


def check_url(url: str) -> None:
    """Raise ValueError (without the URL in it) unless url is an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ValueError("GOOGLE_WEBHOOK_URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("GOOGLE_WEBHOOK_URL must be an absolute http:// or https:// URL")
