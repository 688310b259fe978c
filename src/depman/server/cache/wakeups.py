"""Wake-ups for long-polls: per-instance and per-job asyncio events, fed across replicas by NOTIFY.

Waiters subscribe *before* they read the database, so a commit between the read
and the wait still wakes them. No database connection is held while waiting.
`waiting()` counts the subscribed long-polls (`depman_long_polls_waiting` in
/metrics): a test waits for it before it acts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.engine import make_url

from depman.server.cache.notify import NOTIFY_CHANNEL, Notice, decode, encode, is_own

log = logging.getLogger(__name__)


class WakeupKind(StrEnum):
    """What a long-poll waits for."""

    INSTANCE = "instance"  # items queued for an instance
    JOB = "job"  # a job's state


@dataclass
class _Entry:
    event: asyncio.Event
    waiters: int = 0


class WakeupHub:
    """Events keyed by instance id and job id, set from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tables: dict[WakeupKind, dict[str, _Entry]] = {kind: {} for kind in WakeupKind}
        self._waiting = {kind: 0 for kind in WakeupKind}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop."""
        self._loop = loop

    def waiting(self, kind: WakeupKind) -> int:
        """How many long-polls of `kind` are subscribed now."""
        return self._waiting[kind]

    def subscribe(self, kind: WakeupKind, key: str) -> _Entry:
        """Start waiting for `key`; call in the loop."""
        table = self._tables[kind]
        entry = table.get(key)
        if entry is None:
            entry = table[key] = _Entry(asyncio.Event())
        entry.waiters += 1
        self._waiting[kind] += 1
        return entry

    def unsubscribe(self, kind: WakeupKind, key: str, entry: _Entry) -> None:
        """Stop waiting; the last waiter removes the event."""
        entry.waiters -= 1
        self._waiting[kind] -= 1
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

    def _set(self, kind: WakeupKind, keys: Iterable[str] | None) -> None:
        table = self._tables[kind]
        for key in list(table) if keys is None else keys:
            entry = table.pop(key, None)
            if entry is not None:
                entry.event.set()

    def notify(self, kind: WakeupKind, keys: Iterable[str] | None) -> None:
        """Wake the waiters of `keys` (None: all of `kind`); safe from any thread."""
        keys = None if keys is None else list(keys)
        if keys == [] or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._set(kind, keys)
        else:
            self._loop.call_soon_threadsafe(self._set, kind, keys)

    def wake_all(self) -> None:
        """Release every waiter (shutdown); safe from a signal handler."""
        if self._loop is None or self._loop.is_closed():
            return
        for kind in WakeupKind:
            self._loop.call_soon_threadsafe(self._set, kind, None)


def psycopg_conninfo(url: str) -> str:
    """A libpq connection string for a `postgresql+psycopg://` SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_forever(
    url: str,
    apply: Callable[[Notice, str], None],
    set_listening: Callable[[bool], None],
    *,
    retry_seconds: float = 2.0,
) -> None:
    """LISTEN on the wake-up channel and `apply` what other replicas send; reconnects until
    cancelled. `set_listening(False)` while the connection is down: memos are off then."""
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
                set_listening(True)
                if not announced:
                    # A previous run of this replica may have died between a commit and
                    # its NOTIFY (notify.py): the others drop what they remember.
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, encode(Notice.EVERYTHING))
                    )
                    announced = True
                async for note in conn.notifies():
                    decoded = decode(note.payload)
                    if decoded is not None and not is_own(decoded[0]):
                        apply(decoded[1], decoded[2])
        except asyncio.CancelledError:
            set_listening(False)
            raise
        except Exception as exc:  # a dropped connection must not end the listener
            set_listening(False)
            log.warning("wake-up listener lost its connection (%s); retrying", type(exc).__name__)
            await asyncio.sleep(retry_seconds)
