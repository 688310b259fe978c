"""Wake-ups for long-polls: per-instance and per-job asyncio events, fed across replicas by NOTIFY.

Waiters subscribe *before* they read the database, so a commit between the read
and the wait still wakes them. No database connection is held while waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from depman.core.build_targets import BuildTargets
from depman.core.hints import InstanceHints
from depman.core.signals import NOTIFY_CHANNEL, forget_all_payload, is_own, split_origin

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    event: asyncio.Event
    waiters: int = 0


class WakeupHub:
    """Events keyed by instance id and job id, set from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tables: dict[str, dict[str, _Entry]] = {"i": {}, "j": {}}
        # Server types with pending jobs, as far as this replica knows (refreshed by the sweep).
        self.pending_server_types: set[str] = set()
        self.hints = InstanceHints()
        self.builds = BuildTargets()

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
        """Handle one NOTIFY payload (`depman.core.signals` lists them)."""
        origin, payload = split_origin(payload)
        if is_own(origin):
            return  # our own commit hook applied it already
        kind, _, key = payload.partition(":")
        if kind == "x":
            self.hints.forget_everything()
            return
        if kind == "u":
            self.forget_builds()
            return
        if not key:
            return
        if kind == "t":
            self.hints.forget_tokens([key])
        if kind in ("i", "p", "t"):
            self.hints.forget([key])
        if kind in self._tables:
            self.notify(kind, [key])

    def forget_builds(self) -> None:
        """Agent builds changed: re-read them, drop the heartbeat memos (they hold the offer)."""
        self.builds.invalidate()  # first: a memo kept after the next line is built anew
        self.hints.forget_all_beats()

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
    announced = False
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                log.debug("listening for wake-ups on %s", NOTIFY_CHANNEL)
                # Only now can another replica's enqueue reach this one.
                hub.hints.set_enabled(True)
                if not announced:
                    # A previous run of this replica may have died between a commit and
                    # its NOTIFY (core/signals.py): the others drop what they remember.
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, forget_all_payload())
                    )
                    announced = True
                async for note in conn.notifies():
                    hub.dispatch(note.payload)
        except asyncio.CancelledError:
            hub.hints.set_enabled(False)
            raise
        except Exception as exc:  # a dropped connection must not end the listener
            hub.hints.set_enabled(False)
            log.warning("wake-up listener lost its connection (%s); retrying", type(exc).__name__)
            await asyncio.sleep(retry_seconds)
