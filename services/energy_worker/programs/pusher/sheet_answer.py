"""What the sheet's web app answers, and what that means, pure: a push failed or reached the
sheet.

The Apps Script (docs/google-apps-script/Code.gs) answers text, with status 200 even when it
fails: `ERROR: ...` is a failure. So is an HTML page where the script answers text: Google's
sign-in page, served with 200 when the web app's "Who has access" is not "Anyone". Any status
but 2xx is a failure. Every other 2xx answer is a success, whatever its body: the web app of an
original stack may answer anything. A failure is told with the answer's first line, cleaned
for a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINE_CHARS = 120  # of an answer's first line, in a log line and in `energy-worker status`
TITLE = re.compile(rb"<title[^>]*>([^<]*)</title", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status of the answer; None when no answer came
    error: str | None = None  # why it failed, safe for a log line; None: it did not

    @classmethod
    def of(cls, status: int, content_type: str, body: bytes) -> Answer:
        """Judge an answer by its status, its type and its body's beginning."""
        line = first_line(body)
        if not 200 <= status < 300:
            return cls(status, f"answered {line!r}" if line else "answered nothing")
        text = body.lstrip()
        if text.startswith(b"ERROR"):
            return cls(status, f"the script failed: {line!r}")
        if is_html(content_type, text):
            title = TITLE.search(body)
            shown = first_line(title.group(1)) if title else line
            return cls(
                status,
                f"an HTML page ({shown!r}), not the script's answer: is the web app deployed "
                "with access for Anyone?",
            )
        return cls(status)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        return f"HTTP {self.status}" + (f", {self.error}" if self.error else "")


def is_html(content_type: str, text: bytes) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    start = text[:15].lower()
    return media in ("text/html", "application/xhtml+xml") or start.startswith(
        (b"<!doctype html", b"<html")
    )


def first_line(text: bytes | str) -> str:
    """The first line that says something, printable only, cut to LINE_CHARS."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    cleaned = "".join(c if c.isprintable() else "?" for c in line)
    return cleaned if len(cleaned) <= LINE_CHARS else cleaned[: LINE_CHARS - 1] + "…"
