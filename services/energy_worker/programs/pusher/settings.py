"""The pusher's settings, parsed by the pusher alone: no other program loads the sheet's code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from zoneinfo import ZoneInfo

from energy_worker.adapters.config import ConfigError, seconds, secret, secret_from_env
from energy_worker.core import totals
from energy_worker.programs.pusher import sheet_format


@dataclass(frozen=True)
class PushSettings:
    """The pusher's settings (GOOGLE_WEBHOOK_URL unset: totals only, no pushes)."""

    sheet_url: str | None  # held as a Secret, whatever it was given as
    push_time: time = totals.DEFAULT_PUSH_TIME
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo(totals.DEFAULT_TZ))
    timeout: float = 20.0  # seconds per push request
    history_wait: timedelta = timedelta(hours=2)
    retry_first: float = 30.0  # seconds before the first retry of a failed push; doubles ...
    retry_max: float = 900.0  # ... up to this

    def __post_init__(self) -> None:
        object.__setattr__(self, "sheet_url", secret(self.sheet_url))


def push_settings(env: Mapping[str, str] | None = None) -> PushSettings:
    """GOOGLE_WEBHOOK_URL, PUSH_TIME (HH:MM), TZ, PUSH_TIMEOUT and PUSH_HISTORY_WAIT (seconds).
    Raises ConfigError naming the variable."""
    env = os.environ if env is None else env
    try:
        push_time = totals.parse_clock(env.get("PUSH_TIME"))
    except ValueError as exc:
        raise ConfigError(f"PUSH_TIME: {exc}") from None
    try:
        tz = totals.zone(env.get("TZ"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    url = secret((secret_from_env(env, "GOOGLE_WEBHOOK_URL") or "").strip())
    if url is not None:
        try:
            sheet_format.check_url(url)
        except ValueError as exc:  # its text never holds the URL
            raise ConfigError(str(exc)) from None
    return PushSettings(
        sheet_url=url,
        push_time=push_time,
        tz=tz,
        timeout=seconds(env, "PUSH_TIMEOUT", 20.0, 1.0, 300.0),
        history_wait=timedelta(seconds=seconds(env, "PUSH_HISTORY_WAIT", 7200, 0, 86400)),
    )
