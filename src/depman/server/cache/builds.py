"""This replica's copy of the published agent builds (no bytes), read by every agent answer.

Register and heartbeat answers consult it on each request, so it is held in
memory and re-read only when a transaction wrote `agent_builds` (`invalidation.py`,
here and through NOTIFY in the other replicas) or, should a notification ever be
missed, after `REFRESH_SECONDS`. With memos off it is read on every request.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.engine import Connection

from depman.core.agent_builds import BuildTarget, load_targets

REFRESH_SECONDS = 30.0


class BuildTargets:
    """The published builds by server type; safe from any thread."""

    def __init__(self, refresh_seconds: float = REFRESH_SECONDS, *, enabled: bool = True) -> None:
        self._refresh = refresh_seconds
        self._enabled = enabled
        self._lock = threading.Lock()
        self._targets: dict[str, BuildTarget] | None = None
        self._expires = 0.0
        self._generation = 0

    def invalidate(self) -> None:
        """A build was published or unpublished: the next reader loads them again."""
        with self._lock:
            self._generation += 1
            self._targets = None

    def target(self, server_type: str, conn: Connection) -> BuildTarget | None:
        """The build published for `server_type`, loading the table with `conn` if stale."""
        return self._current(conn).get(server_type)

    def _current(self, conn: Connection) -> dict[str, BuildTarget]:
        targets = self._targets
        if targets is not None and time.monotonic() < self._expires:
            return targets
        generation = self._generation
        loaded = load_targets(conn)
        if not self._enabled:
            return loaded
        with self._lock:
            # A load that raced an invalidation may hold the old rows: use, don't keep.
            if generation == self._generation:
                self._targets = loaded
                self._expires = time.monotonic() + self._refresh
        return loaded
