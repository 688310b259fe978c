"""What one server process keeps in memory for the agent gateway, and how it learns to forget.

| module | holds |
| --- | --- |
| `memos.py` | per instance: the empty poll's answer, the heartbeat memo, the token hash |
| `beats.py` | unchanged heartbeats acknowledged and not yet written (write-behind) |
| `builds.py` | the published agent builds (no bytes) |
| `wakeups.py` | the long-polls waiting, per instance and per job; the NOTIFY listener |
| `changes.py` | which write makes which memo stale, table by table |
| `invalidation.py` | the engine and session hooks that read every committed write |
| `notify.py` | the NOTIFY payloads and their sender |

Nothing in `depman.core` knows any of it: the core writes rows, and the hooks
here read what was written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from depman.server.cache.beats import BeatBuffer
from depman.server.cache.builds import BuildTargets
from depman.server.cache.changes import Changes
from depman.server.cache.memos import InstanceMemos
from depman.server.cache.notify import Notice, Notifier, encode
from depman.server.cache.wakeups import WakeupHub, WakeupKind


class PendingTypes:
    """Server types with a job waiting for an instance, as far as this replica knows.

    Refreshed from the database by each maintenance sweep; between sweeps, a write
    that left a job pending adds its type (or, when the type was not written, makes
    every type count until the next refresh).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: set[str] = set()
        self._unknown = False

    def __contains__(self, server_type: object) -> bool:
        return self._unknown or server_type in self._types

    def add(self, server_types: Iterable[str], *, unknown: bool = False) -> None:
        """Jobs of these types wait (`unknown`: some job waits, of a type not read)."""
        with self._lock:
            self._types.update(server_types)
            self._unknown = self._unknown or unknown

    def refresh(self, server_types: Iterable[str]) -> None:
        """The sweep read the pending jobs' types from the database."""
        with self._lock:
            self._types = set(server_types)
            self._unknown = False


@dataclass
class ServerCache:
    """The agent gateway's memory of one process (see the module docstring)."""

    memos: InstanceMemos = field(default_factory=InstanceMemos)
    builds: BuildTargets = field(default_factory=BuildTargets)
    hub: WakeupHub = field(default_factory=WakeupHub)
    beats: BeatBuffer = field(default_factory=BeatBuffer)
    pending: PendingTypes = field(default_factory=PendingTypes)
    notifier: Notifier | None = None  # PostgreSQL: tells the other replicas
    received_count: int = 0  # notices applied from other replicas (/metrics)
    # Told of each change that drops memos of every instance at once, by scope
    # ("everything", "instances", "heartbeats"; /metrics counts them): each sends the
    # fleet's next polls or heartbeats to the database, and all but "heartbeats" wake
    # every long-poll.
    on_fleet_drop: Callable[[str], None] | None = None

    @classmethod
    def create(cls, *, memos: bool = True) -> ServerCache:
        """A cache with memos on, or off (every agent request asks the database)."""
        return cls(memos=InstanceMemos(enabled=memos), builds=BuildTargets(enabled=memos))

    def committed(self, changes: Changes) -> None:
        """A transaction of this process committed `changes`: apply, then tell the others."""
        self.apply(changes, own=True)
        if self.notifier is not None:
            self.notifier.send([encode(notice, key) for notice, key in changes.notices()])

    def received(self, notice: Notice, key: str) -> None:
        """Another replica committed a change."""
        changes = Changes()
        changes.add_notice(notice, key)
        self.apply(changes)
        self.received_count += 1  # after applying: a test that saw the count sees the effect

    def _fleet_drop(self, scope: str) -> None:
        if self.on_fleet_drop is not None:
            self.on_fleet_drop(scope)

    def apply(self, changes: Changes, *, own: bool = False) -> None:
        """Drop what `changes` made stale; wake the long-polls they concern.

        `own`: this thread committed them (a memo it builds from its own writes stays valid).
        """
        memos, hub = self.memos, self.hub
        if changes.pending_types or changes.pending_unknown:
            self.pending.add(changes.pending_types, unknown=changes.pending_unknown)
        if changes.everything:
            self._fleet_drop("everything")
            self.builds.invalidate()
            memos.forget_everything(own=own)
            hub.notify(WakeupKind.INSTANCE, None)
            hub.notify(WakeupKind.JOB, None)
            return
        if changes.builds:
            self.builds.invalidate()  # first: a memo kept after the next line is built anew
        if changes.builds or changes.all_beats:
            self._fleet_drop("heartbeats")
            memos.forget_all_beats(own=own)
        if changes.all_instances:
            self._fleet_drop("instances")
            memos.forget_all_instances(own=own)
            hub.notify(WakeupKind.INSTANCE, None)
        if changes.tokens:
            memos.forget_tokens(changes.tokens)
        dropped = changes.instances | changes.queued | changes.tokens
        if dropped:
            memos.forget(dropped, own=own)
        if changes.beats:
            memos.forget_beats(changes.beats)
        hub.notify(WakeupKind.INSTANCE, changes.queued)
        hub.notify(WakeupKind.JOB, None if changes.all_jobs else changes.jobs)
