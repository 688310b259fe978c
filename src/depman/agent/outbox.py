"""Item statuses the control plane could not take yet, kept in order and sent again.

A status lost to a proxy's 404 or 413 would leave the item ``running`` on the
server forever; a status held back would keep the loop from serving. So a
status that fails is kept (in memory, in order) and every later status queues
behind it until the control plane takes them again. One the server keeps
refusing with a 4xx is dropped after ``DROP_AFTER_REFUSALS`` tries: the
heartbeat still reports the dep as installed or failed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from .client import ControlPlaneClient
from .errors import ServerError
from .logonce import problems

log = logging.getLogger("depman.agent")
DROP_AFTER_REFUSALS = 20
MAX_PENDING = 5000


@dataclass
class _Pending:
    body: dict[str, Any]
    refusals: int = 0


class StatusOutbox:
    def __init__(self, client: ControlPlaneClient) -> None:
        self.client = client
        self.pending: deque[_Pending] = deque()

    def post(self, body: dict[str, Any], attempts: int | None = None) -> None:
        if self.pending:
            self._keep(body)
            self.flush()
            return
        try:
            self.client.status(body, attempts=attempts)
        except ServerError as exc:
            self._keep(body)
            problems.warn("status outbox", "Could not post status %s of item %s (%s); kept "
                          "to send again", body.get("state"), body.get("itemId"), exc.message)

    def flush(self) -> None:
        """Send what is kept, oldest first, one try each; stop at the first failure."""
        while self.pending:
            entry = self.pending[0]
            try:
                self.client.status(entry.body, attempts=1)
            except ServerError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    entry.refusals += 1
                    if entry.refusals >= DROP_AFTER_REFUSALS:
                        log.warning("Dropping status %s of item %s: refused %d times (%s)",
                                    entry.body.get("state"), entry.body.get("itemId"),
                                    entry.refusals, exc.message)
                        self.pending.popleft()
                        continue
                return
            self.pending.popleft()
        problems.ok("status outbox")

    def _keep(self, body: dict[str, Any]) -> None:
        if len(self.pending) >= MAX_PENDING:
            dropped = self.pending.popleft()
            log.warning("Status outbox full; dropping status %s of item %s",
                        dropped.body.get("state"), dropped.body.get("itemId"))
        self.pending.append(_Pending(body))
