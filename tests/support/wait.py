"""The one way tests wait: poll a condition until it holds, never sleep and then act."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.05


def wait_until(
    probe: Callable[[], T], timeout: float = 30.0, what: str | None = None, *,
    interval: float = POLL_SECONDS,
) -> T:
    """Call ``probe`` until it answers something truthy, and return that answer.

    At the deadline, with ``what``: fail the test, naming what it waited for.
    Without: return the last (falsy) answer, so that ``assert wait_until(probe, 30),
    agent.log()`` fails with the assertion's own message, and a caller that carries on
    either way (a clean-up) can.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            if what is not None:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            return value
        time.sleep(interval)
