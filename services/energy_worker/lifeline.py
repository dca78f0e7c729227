"""Our programs run under supervisord. If it dies without stopping them (kill -9, a closed
terminal under `make run`), they exit instead of running on unsupervised, holding the
processor's lock and their connections. Each program looks whenever its loop wakes."""

from __future__ import annotations

import logging
import os

EXIT_ORPHANED = 1
_PARENT = os.getppid()


def check(log: logging.Logger) -> None:
    """Exit if the process that started this one is gone."""
    if os.getppid() != _PARENT:
        log.error("the process that started this one (pid %s) is gone; exiting", _PARENT)
        raise SystemExit(EXIT_ORPHANED)
