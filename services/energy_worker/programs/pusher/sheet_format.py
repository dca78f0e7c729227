"""The Google Sheet push's format, pure (README.md, "Google Sheet push and totals").

`GET <GOOGLE_WEBHOOK_URL>?function=updateSheet&dataString=279.97,752.04,...&id=...&day=...`:
each meter's kWh to two decimals, in meter order, commas literal; then what the Apps Script
(docs/google-apps-script/Code.gs) needs to write each push once, each meter in its own column:
the push's id (the same on every retry), the local day it stands for, the instant of the
readings, the meters' numbers and their names (`fields`). A script that does not know these
parameters ignores them, as the original stack's does. The URL is a capability (an Apps Script
URL's path is its key, and a query string may hold a token), so a URL is only ever shown as its
scheme and host.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import quote, urlsplit

FUNCTION = "updateSheet"
CENT = Decimal("0.01")


def kwh_text(kwh: Decimal | None) -> str:
    """A reading to two decimals; a meter without any reading yet shows 0.00, as meter_status
    (whose kWh starts at 0) would."""
    value = (kwh if kwh is not None else Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{value:f}"


def data_string(readings: Sequence[Decimal | None]) -> str:
    return ",".join(kwh_text(kwh) for kwh in readings)


def fields(
    push_id: str,
    day: date,
    at: datetime,
    meters: Sequence[tuple[int, str]] | None,
) -> str:
    """The parameters after dataString: `id`, `day` (YYYY-MM-DD), `at` (the readings' instant,
    ISO 8601 with its offset), `meters` (their numbers, in dataString's order) and `name<n>`
    for each. meters None: a push recorded before they were (no meters, no names)."""
    pairs = [("id", push_id), ("day", day.isoformat()), ("at", at.isoformat(timespec="seconds"))]
    if meters is not None:
        pairs.append(("meters", ",".join(str(number) for number, _name in meters)))
        pairs.extend((f"name{number}", name) for number, name in meters)
    # Commas and colons stay literal (as in dataString); everything else is percent-encoded,
    # the offset's "+" too (a literal one would arrive as a space).
    return "&".join(f"{key}={quote(value, safe=',:')}" for key, value in pairs)


def push_url(base: str, data: str, extra: str = "") -> str:
    """The request URL: a base with a query string of its own gets `&function=...`; `extra`
    (fields()) follows dataString."""
    base, _, _fragment = base.partition("#")  # a fragment is never sent anyway
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    tail = f"&{extra}" if extra else ""
    return f"{base}{separator}function={FUNCTION}&dataString={data}{tail}"


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
