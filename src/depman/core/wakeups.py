"""Wake-ups for long-polls: per-instance and per-job asyncio events, fed across replicas by NOTIFY.

Waiters subscribe *before* they read the database, so a commit between the read
and the wait still wakes them. No database connection is held while waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from depman.core.signals import NOTIFY_CHANNEL

log = logging.getLogger(__name__)
# Bounds how stale a poll hint can get if an invalidation were ever missed.
HINT_SECONDS = 60.0


@dataclass
class _Entry:
    event: asyncio.Event
    waiters: int = 0


class PollHints:
    """Per instance: "no queued item", with the answer to send, so an empty v1 poll costs no query.

    10,000 v1 agents poll 2,000 times a second, almost always for nothing (issue 5).
    A hint is set only by a database poll that found no item, and only if no
    invalidation for that instance happened since the poll started (the epoch
    check), so a commit racing the read can never be hidden. Invalidations: the
    commit hook (enqueue and pin changes in this process), and NOTIFY from other
    replicas; while the PostgreSQL listener is down, hints are off and cleared.
    """

    def __init__(self, ttl: float = HINT_SECONDS, *, enabled: bool = True) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._empty: dict[str, tuple[bytes, float]] = {}
        self._epochs: dict[str, int] = {}
        self._generation = 0
        self._enabled = enabled

    def epoch(self, instance_id: str) -> tuple[int, int]:
        """Take before reading the database; hand to `remember_empty` afterwards."""
        return self._generation, self._epochs.get(instance_id, 0)

    def empty_answer(self, instance_id: str) -> bytes | None:
        """The cached answer of an instance known to have nothing queued, if fresh."""
        entry = self._empty.get(instance_id)
        if entry is None or not self._enabled or entry[1] < time.monotonic():
            return None
        return entry[0]

    def remember_empty(self, instance_id: str, answer: bytes, seen: tuple[int, int]) -> None:
        """Cache an empty poll's answer, unless the instance changed since `seen`."""
        with self._lock:
            if self._enabled and self.epoch(instance_id) == seen:
                self._empty[instance_id] = (answer, time.monotonic() + self._ttl)

    def forget(self, instance_ids: Iterable[str]) -> None:
        """Items were queued or pins changed: the next poll asks the database."""
        with self._lock:
            for instance_id in instance_ids:
                self._epochs[instance_id] = self._epochs.get(instance_id, 0) + 1
                self._empty.pop(instance_id, None)

    def set_enabled(self, enabled: bool) -> None:
        """Turn hints on or off; either way every hint is dropped."""
        with self._lock:
            self._enabled = enabled
            self._generation += 1
            self._empty.clear()


class WakeupHub:
    """Events keyed by instance id and job id, set from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tables: dict[str, dict[str, _Entry]] = {"i": {}, "j": {}}
        # Server types with pending jobs, as far as this replica knows (refreshed by the sweep).
        self.pending_server_types: set[str] = set()
        self.hints = PollHints()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop."""
        self._loop = loop

    def subscribe(self, kind: str, key: str) -> _Entry:
        """Start waiting for `key` (kind `i` instance, `j` job); call in the loop."""
        table = self._tables[kind]
        entry = table.get(key)
        if entry is None:
            entry = table[key] = _Entry(asyncio.Event())
        entry.waiters += 1
        return entry

    def unsubscribe(self, kind: str, key: str, entry: _Entry) -> None:
        """Stop waiting; the last waiter removes the event."""
        entry.waiters -= 1
        table = self._tables[kind]
        if entry.waiters <= 0 and table.get(key) is entry:
            del table[key]

    @staticmethod
    async def wait(entry: _Entry, timeout: float) -> bool:
        """Wait until woken or `timeout` passes; True when woken."""
        try:
            await asyncio.wait_for(entry.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _set(self, kind: str, keys: Iterable[str]) -> None:
        table = self._tables[kind]
        for key in keys:
            entry = table.pop(key, None)
            if entry is not None:
                entry.event.set()

    def notify(self, kind: str, keys: Iterable[str]) -> None:
        """Wake the waiters of `keys`; safe from any thread."""
        keys = list(keys)
        if not keys or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._set(kind, keys)
        else:
            self._loop.call_soon_threadsafe(self._set, kind, keys)

    def dispatch(self, payload: str) -> None:
        """Handle one NOTIFY payload (`i:<instanceId>`, `p:<instanceId>` or `j:<jobId>`)."""
        kind, _, key = payload.partition(":")
        if not key:
            return
        if kind in ("i", "p"):
            self.hints.forget([key])
        if kind in self._tables:
            self.notify(kind, [key])

    def wake_all(self) -> None:
        """Release every waiter (shutdown); safe from a signal handler."""
        if self._loop is None or self._loop.is_closed():
            return
        for kind, table in self._tables.items():
            self._loop.call_soon_threadsafe(self._set, kind, list(table))


def psycopg_conninfo(url: str) -> str:
    """A libpq connection string for a `postgresql+psycopg://` SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_forever(url: str, hub: WakeupHub, *, retry_seconds: float = 2.0) -> None:
    """LISTEN on the wake-up channel and feed the hub; reconnects until cancelled."""
    import psycopg

    conninfo = psycopg_conninfo(url)
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                log.debug("listening for wake-ups on %s", NOTIFY_CHANNEL)
                # Only now can another replica's enqueue reach this one.
                hub.hints.set_enabled(True)
                async for note in conn.notifies():
                    hub.dispatch(note.payload)
        except asyncio.CancelledError:
            hub.hints.set_enabled(False)
            raise
        except Exception as exc:  # a dropped connection must not end the listener
            hub.hints.set_enabled(False)
            log.warning("wake-up listener lost its connection (%s); retrying", type(exc).__name__)
            await asyncio.sleep(retry_seconds)
