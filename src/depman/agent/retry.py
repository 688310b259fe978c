"""Capped exponential backoff with jitter; progress resets the budget."""

from __future__ import annotations

import random
from collections.abc import Callable


class RetryPolicy:
    """Decides how long to wait before the next try, or that it is time to give up.

    ``max_attempts`` counts consecutive failures without progress; call
    ``reset()`` whenever useful work happened (bytes arrived, a call succeeded)
    so a long download over a flaky link is never failed for old errors.
    ``max_attempts=None`` retries forever (the control-plane client).
    """

    def __init__(self, *, max_attempts: int | None = 5, base_delay: float = 1.0,
                 max_delay: float = 60.0, jitter: float = 0.2,
                 rand: Callable[[], float] = random.random) -> None:
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.failures = 0
        self._rand = rand

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Record a failure; seconds to wait before retrying, or None to give up."""
        self.failures += 1
        if self.max_attempts is not None and self.failures >= self.max_attempts:
            return None
        delay = min(self.max_delay, self.base_delay * 2 ** (self.failures - 1))
        delay *= 1 + self.jitter * (2 * self._rand() - 1)
        if retry_after is not None:
            # The server knows best, within reason: never longer than the cap.
            delay = max(delay, min(retry_after, self.max_delay))
        return max(0.0, delay)
