"""Warnings a process would repeat at every turn of a loop, logged at most once a minute
per kind: the first says what is wrong, the rest would bury the log."""

from __future__ import annotations

import logging
import time
from typing import Any

WARN_EVERY_SECONDS = 60.0


class WarnLimiter:
    """Warns through `logger`, at most once per `every_seconds` for each kind."""

    def __init__(self, logger: logging.Logger, every_seconds: float = WARN_EVERY_SECONDS) -> None:
        self._log = logger
        self._every = every_seconds
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        """Log `message % args` as a warning unless a `kind` one went out within the period."""
        now = time.monotonic()
        if now - self._last.get(kind, -self._every) >= self._every:
            self._last[kind] = now
            self._log.warning(message, *args)
