"""How often the loop may ask the queue: an idle agent must not spin on the control plane.

Earlier the long-poll wait was cut to the time left before the next heartbeat
and rounded down, so in the last second before every heartbeat the agent asked
the queue with no wait at all, thousands of times a second. Now:

- an idle agent holds each queue request at least ``IDLE_LONG_POLL_MIN_SECONDS``
  (or ``DM_LONG_POLL_SECONDS`` when longer); when the heartbeat falls due
  before that, it is sent first, a little early, instead of cutting the poll;
- a request the server answered early without new work is not repeated before
  the time it asked the server to hold it has passed (a proxy that ignores
  ``waitSeconds`` cannot make it spin either);
- without long-poll, the queue is asked every ``DM_POLL_SECONDS`` (±20 %).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from . import protocol as p
from .config import AgentConfig

IDLE_LONG_POLL_MIN_SECONDS = 15
BUSY_LONG_POLL_SECONDS = 1  # a free slot while downloading: pick the next item up fast
POLL_FLOOR_SECONDS = 0.2


class QueuePacer:
    """``plan`` says how long the next queue request should be held; ``done`` when back."""

    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self.clock = clock
        self.rand = rand
        self.next_at = 0.0
        self.sent_at = 0.0
        self.asked = 0

    def hold(self) -> float:
        """Seconds before the next queue request may go out (<= 0: now)."""
        return self.next_at - self.clock()

    def wanted_wait(self, busy: bool) -> int:
        """``waitSeconds`` to ask for before the heartbeat is taken into account."""
        if busy:
            return BUSY_LONG_POLL_SECONDS
        seconds = max(self.config.long_poll_seconds, IDLE_LONG_POLL_MIN_SECONDS)
        return int(min(seconds, p.LONG_POLL_MAX_SECONDS))

    def heartbeat_first(self, busy: bool, heartbeat_due: float, since_heartbeat: float) -> bool:
        """True when a heartbeat falling due inside the next poll should go now instead.

        At most one such early heartbeat per ``IDLE_LONG_POLL_MIN_SECONDS``: with a
        heartbeat interval shorter than that, polls simply end at each heartbeat.
        """
        return (not busy and heartbeat_due < self.wanted_wait(busy)
                and heartbeat_due < IDLE_LONG_POLL_MIN_SECONDS
                and since_heartbeat >= IDLE_LONG_POLL_MIN_SECONDS)

    def wait_for(self, busy: bool, heartbeat_due: float) -> int:
        """Whole seconds to hold the request: never 0 with long-poll (that was the spin)."""
        return max(1, int(min(self.wanted_wait(busy), max(heartbeat_due, 1.0))))

    def start(self) -> None:
        self.sent_at = self.clock()
        self.asked += 1

    def done(self, *, long_poll: bool, wait_seconds: float, new_work: bool) -> None:
        """Set when the next request may go: at once after new work, else after the hold."""
        if long_poll:
            self.next_at = self.sent_at if new_work else self.sent_at + wait_seconds
            return
        jitter = 1 + 0.2 * (2 * self.rand() - 1)
        self.next_at = self.sent_at + max(POLL_FLOOR_SECONDS,
                                          self.config.poll_seconds * jitter)
