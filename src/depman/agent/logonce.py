"""Log a recurring problem once, not once per loop, and say when it is over."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("depman.agent")


class ProblemLog:
    """``warn(key, ...)`` logs the first time ``key`` goes wrong; ``ok(key)`` ends it.

    The control plane down for an hour, or a proxy answering 404 to every queue
    call, makes one warning line (and one "recovered" line), not thousands.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            repeats = self._open.get(key)
            self._open[key] = (repeats or 0) + 1
        if repeats is None:
            log.warning(message + " (logged once until it recovers)", *args)

    def ok(self, key: str) -> None:
        with self._lock:
            repeats = self._open.pop(key, None)
        if repeats is not None:
            log.info("Recovered: %s (after %d failure%s)", key, repeats,
                     "" if repeats == 1 else "s")

    def is_open(self, key: str) -> bool:
        with self._lock:
            return key in self._open


problems = ProblemLog()
