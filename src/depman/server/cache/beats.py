"""Unchanged heartbeats, acknowledged from memory and written to the store in batches.

An unchanged heartbeat of a live instance changes only its liveness time (a beat
with other figures is written when it comes). 10,000 agents send 333 of them a
second; one UPDATE each, with its commit, cost more than the rest of the server's
work together. They are kept here, latest per instance, and a flusher writes them every
`heartbeat_flush_seconds` in one statement. A beat written late by that much is
harmless: an instance stays live for three heartbeat intervals.

A batched row applies only if the stored inventory digest is still the one the
beat was acknowledged against and no newer heartbeat was written meanwhile; the
caller drops the memos of instances whose row did not take it. On PostgreSQL the
batch never waits for a row lock (a placement or a status report may hold one):
locked rows are skipped and their beats kept for the next batch, so one slow
transaction cannot make the batch hold hundreds of other rows locked behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, text, update
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.store.models import Instance, UtcDateTime
from depman.store.writes import declare_writes


@dataclass(frozen=True)
class PendingBeat:
    """One acknowledged heartbeat not yet written: when it came, over which inventory."""

    at: datetime
    digest: str


MAX_RETRY_SECONDS = 10.0  # a beat skipped (row locked) is retried this long


class BeatBuffer:
    """instance id → its latest acknowledged, unwritten heartbeat; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, PendingBeat] = {}

    def add(self, instance_id: str, beat: PendingBeat) -> None:
        """Keep a beat (a later one for the same instance replaces it)."""
        with self._lock:
            self._pending[instance_id] = beat

    def restore(self, beats: Mapping[str, PendingBeat]) -> None:
        """Put back beats a batch skipped, unless a later one arrived meanwhile."""
        with self._lock:
            for instance_id, beat in beats.items():
                self._pending.setdefault(instance_id, beat)

    def discard(self, instance_id: str) -> None:
        """A heartbeat of the instance was written directly: its pending one is older."""
        with self._lock:
            self._pending.pop(instance_id, None)

    def take(self) -> dict[str, PendingBeat]:
        """Everything pending, leaving the buffer empty."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def __len__(self) -> int:
        return len(self._pending)


_LOCK_PG = text(
    "SELECT instance_id FROM instances WHERE instance_id = ANY(CAST(:ids AS varchar[])) "
    "ORDER BY instance_id FOR UPDATE SKIP LOCKED"
)
_WRITE_PG = declare_writes(
    text(
        "UPDATE instances AS i SET last_heartbeat_at = v.at "
        "FROM unnest(CAST(:ids AS varchar[]), CAST(:ats AS timestamptz[]), "
        "CAST(:digests AS varchar[])) AS v(id, at, digest) "
        "WHERE i.instance_id = v.id AND i.inventory_digest = v.digest "
        "AND (i.last_heartbeat_at IS NULL OR i.last_heartbeat_at < v.at) "
        "RETURNING i.instance_id"
    ),
    columns=["last_heartbeat_at"],
)


def _write_one() -> Any:
    at = bindparam("at", type_=UtcDateTime())
    return (
        update(Instance)
        .where(
            Instance.instance_id == bindparam("id"),
            Instance.inventory_digest == bindparam("digest"),
            or_(Instance.last_heartbeat_at.is_(None), Instance.last_heartbeat_at < at),
        )
        .values(last_heartbeat_at=at)
    )


_WRITE_ONE = _write_one()


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch did: rows that refused their beat, and beats left for the next batch."""

    refused: set[str]
    skipped: dict[str, PendingBeat]


def write_beats(beats: Mapping[str, PendingBeat], *, session: Session) -> BatchOutcome:
    """Write the beats (the caller commits)."""
    if not beats:
        return BatchOutcome(set(), {})
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        locked = sorted(conn.execute(_LOCK_PG, {"ids": sorted(beats)}).scalars())
        params: dict[str, Any] = {
            "ids": locked,
            "ats": [beats[i].at for i in locked],
            "digests": [beats[i].digest for i in locked],
        }
        taken = set(conn.execute(_WRITE_PG, params).scalars()) if locked else set()
        held = set(locked)
        # A row that stays away (locked that long, or deleted) gives its beat up.
        oldest = utcnow() - timedelta(seconds=MAX_RETRY_SECONDS)
        missing = {i: beat for i, beat in beats.items() if i not in held}
        skipped = {i: beat for i, beat in missing.items() if beat.at >= oldest}
        return BatchOutcome((held - taken) | (set(missing) - set(skipped)), skipped)
    refused = set()  # SQLite: one writer at a time, no row locks to wait for
    for instance_id, beat in beats.items():
        result = conn.execute(_WRITE_ONE, {"id": instance_id, "digest": beat.digest, "at": beat.at})
        if result.rowcount != 1:
            refused.add(instance_id)
    return BatchOutcome(refused, {})
