"""Unchanged heartbeats, acknowledged from memory and written to the store in batches.

An unchanged heartbeat of a live instance changes only its liveness time and a few
disk figures. 10,000 agents send 333 of them a second (issue 5); one UPDATE each,
with its commit, cost more than the rest of the server's work together. They are
kept here, latest per instance, and a flusher writes them every
`heartbeat_flush_seconds` in one statement. A beat written late by that much is
harmless: an instance stays live for three heartbeat intervals.

A batched row applies only if the stored inventory digest is still the one the
beat was acknowledged against and no newer heartbeat was written meanwhile; the
caller drops the memos of instances whose row did not take it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, func, or_, text, update
from sqlalchemy.orm import Session

from depman.core.inventory import SCALAR_COLUMNS
from depman.store.models import Instance, UtcDateTime


@dataclass(frozen=True)
class PendingBeat:
    """One acknowledged heartbeat not yet written; None figures keep the stored value."""

    at: datetime
    digest: str
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_used_bytes: int | None = None
    dynamic_bytes_used: int | None = None
    queue_depth: int | None = None


FIGURES = SCALAR_COLUMNS  # the figures a heartbeat carries besides its lists


class BeatBuffer:
    """instance id → its latest acknowledged, unwritten heartbeat; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, PendingBeat] = {}

    def add(self, instance_id: str, beat: PendingBeat) -> None:
        """Keep a beat (a later one for the same instance replaces it)."""
        with self._lock:
            self._pending[instance_id] = beat

    def take(self) -> dict[str, PendingBeat]:
        """Everything pending, leaving the buffer empty."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def __len__(self) -> int:
        return len(self._pending)


_WRITE_PG = text(
    "UPDATE instances AS i SET last_heartbeat_at = v.at, "
    + ", ".join(f"{name} = coalesce(v.{name}, i.{name})" for name in FIGURES)
    + " FROM unnest(CAST(:ids AS varchar[]), CAST(:ats AS timestamptz[]), "
    "CAST(:digests AS varchar[]), "
    + ", ".join(f"CAST(:{name} AS bigint[])" for name in FIGURES)
    + ") AS v(id, at, digest, "
    + ", ".join(FIGURES)
    + ") WHERE i.instance_id = v.id AND i.inventory_digest = v.digest "
    "AND (i.last_heartbeat_at IS NULL OR i.last_heartbeat_at < v.at) "
    "RETURNING i.instance_id"
)


def _write_one() -> Any:
    keep = {
        name: func.coalesce(bindparam(name, type_=BigInteger), getattr(Instance, name))
        for name in FIGURES
    }
    at = bindparam("at", type_=UtcDateTime())
    return (
        update(Instance)
        .where(
            Instance.instance_id == bindparam("id"),
            Instance.inventory_digest == bindparam("digest"),
            or_(Instance.last_heartbeat_at.is_(None), Instance.last_heartbeat_at < at),
        )
        .values(last_heartbeat_at=at, **keep)
    )


_WRITE_ONE = _write_one()


def write_beats(beats: Mapping[str, PendingBeat], *, session: Session) -> set[str]:
    """Write the beats (the caller commits); answers the instance ids whose row refused."""
    if not beats:
        return set()
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        ids = list(beats)
        params: dict[str, Any] = {
            "ids": ids,
            "ats": [beats[i].at for i in ids],
            "digests": [beats[i].digest for i in ids],
        }
        for name in FIGURES:
            params[name] = [getattr(beats[i], name) for i in ids]
        taken = set(conn.execute(_WRITE_PG, params).scalars())
        return set(ids) - taken
    refused = set()
    for instance_id, beat in beats.items():
        values = {name: getattr(beat, name) for name in FIGURES}
        result = conn.execute(
            _WRITE_ONE, {"id": instance_id, "digest": beat.digest, "at": beat.at, **values}
        )
        if result.rowcount != 1:
            refused.add(instance_id)
    return refused
