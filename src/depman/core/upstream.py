"""Upstream caps: at most N downloads in flight from one upstream host across the fleet.

`DEPMAN_UPSTREAM_CONCURRENCY` (`huggingface.co=16,civitai.com=4`) caps hosts by
name. A download counts against its host from the moment a poll hands it out:

- a queue item is *in flight* while it is `running`, or while it is `queued` and a
  poll handed it out less than `upstream_lease_seconds` ago. A v1 field agent may
  take an item and report `running` only when its turn comes; each poll that hands
  the same item out again renews the lease, so an agent that keeps polling keeps
  its slot, and one that vanished gives it back once the lease lapses. A final
  report (succeeded, failed, cancelled) frees the slot at once;
- a slot taken with `take_slot` (the mirror fill) is in flight until `release_slot`
  or its expiry.

`poll_queue` (core/queue.py), which every poll of every gateway stage calls, asks
`grant` which capped items it may hand out; the others stay queued, marked as
waiting for their host, and are offered again at the instance's next poll. The
count and the grant run in one write transaction per poll that holds capped
items, serialized per host (SQLite: the write lock; PostgreSQL: an advisory
transaction lock per host), so replicas never grant past the cap together. With
no caps configured nothing here runs and a poll stays one read.

The host is the one of the dep's own upstream URL (the first file's for a folder
model). A dep handed out from the fleet mirror is not capped (the poll row says
whether the mirror holds it, as `resolved_document` decides); each hand-out
decides anew, so an item whose earlier hand-out took a slot gives it back when it
is handed out from the mirror.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from depman.core.states import ItemState, Op
from depman.store.models import QueueItem, UpstreamSlot

# Instances woken when a slot comes free: enough to fill it, not the whole fleet.
WAKE_LIMIT = 64
@dataclass
class UpstreamGate:
    """The caps, the lease, and where to take their write transactions."""

    caps: dict[str, int]
    lease_seconds: float
    # A write transaction on a connection of its own (the poll's own may be read-only).
    begin: Callable[[], AbstractContextManager[Connection]]

    @property
    def active(self) -> bool:
        """Whether any host is capped."""
        return bool(self.caps)


@dataclass(frozen=True)
class Candidate:
    """A download a poll is about to hand out."""

    item_id: int  # queue_items.id
    dep_id: str
    url: str | None
    files: list[dict[str, Any]] | None
    op: str
    mirrored: bool = False  # handed out from the fleet mirror: not the upstream's load
    # The host whose slot an earlier hand-out of this item took (`upstream_host`), if any.
    held_host: str | None = None


def waiting_for_upstream(item: QueueItem) -> str | None:
    """The capped upstream host a queued item waits for , or None."""
    return item.waiting_upstream if item.state == ItemState.QUEUED.value else None


def upstream_host(url: str | None, files: list[dict[str, Any]] | None) -> str | None:
    """The host a dep downloads from (a folder model: its first file's)."""
    if files:
        first = files[0].get("url") if isinstance(files[0], dict) else None
        url = first if isinstance(first, str) else url
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def _lock_host(conn: Connection, host: str) -> None:
    if conn.dialect.name == "postgresql":
        digest = hashlib.sha256(b"depman-upstream:" + host.encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    # SQLite: the transaction already holds the database's write lock (BEGIN IMMEDIATE).


def in_flight(
    conn: Connection, host: str, *, now: datetime, lease_seconds: float, besides: Iterable[int] = ()
) -> int:
    """Downloads in flight from `host` across the fleet, leaving out the items `besides`."""
    cutoff = now - timedelta(seconds=lease_seconds)
    items = select(func.count()).where(
        QueueItem.upstream_host == host,
        QueueItem.op == Op.DOWNLOAD.value,
        or_(
            QueueItem.state == ItemState.RUNNING.value,
            # Handed out within the lease, and not backing off after a `retrying` report.
            (QueueItem.state == ItemState.QUEUED.value)
            & (QueueItem.handed_out_at >= cutoff)
            & or_(QueueItem.next_attempt_at.is_(None), QueueItem.next_attempt_at <= now),
        ),
    )
    skip = list(besides)
    if skip:
        items = items.where(QueueItem.id.not_in(skip))
    slots = select(func.count()).where(UpstreamSlot.host == host, UpstreamSlot.expires_at > now)
    return int(conn.execute(items).scalar_one()) + int(conn.execute(slots).scalar_one())


def grant(
    gate: UpstreamGate, instance_id: str, candidates: list[Candidate], *, now: datetime
) -> tuple[set[int], dict[int, str]]:
    """(item ids the poll may hand out, item id -> host of those that must wait).

    `candidates` are items of `instance_id`, the polling instance; they keep their
    order (the poll's dispatch order) within each host. Each write names the instance
    too: a write of queue items that names none makes every memo of the fleet stale.
    """
    mine_only = QueueItem.instance_id == instance_id
    by_host: dict[str, list[Candidate]] = {}
    allowed: set[int] = set()
    for cand in candidates:
        host = upstream_host(cand.url, cand.files)
        if (
            cand.op != Op.DOWNLOAD.value
            or host is None
            or host not in gate.caps
            or cand.mirrored
        ):
            allowed.add(cand.item_id)
        else:
            by_host.setdefault(host, []).append(cand)
    waiting: dict[int, str] = {}
    # Handed out without a slot now (e.g. the mirror holds the file since an earlier
    # hand-out took one): a running download must not count against that host.
    stale = [c.item_id for c in candidates if c.item_id in allowed and c.held_host is not None]
    if stale:
        with gate.begin() as conn:
            conn.execute(
                update(QueueItem)
                .where(mine_only, QueueItem.id.in_(stale))
                .values(upstream_host=None, handed_out_at=None)
            )
    if not by_host:
        return allowed, waiting
    cutoff = now - timedelta(seconds=gate.lease_seconds)
    with gate.begin() as conn:
        for host in sorted(by_host):  # one lock order: no deadlock between pollers
            _lock_host(conn, host)
            mine = [c.item_id for c in by_host[host]]
            # Items of this poll that already hold a slot (handed out within the lease) go first.
            held = set(
                conn.execute(
                    select(QueueItem.id).where(
                        QueueItem.id.in_(mine),
                        QueueItem.upstream_host == host,
                        QueueItem.handed_out_at >= cutoff,
                    )
                ).scalars()
            )
            free = gate.caps[host] - in_flight(
                conn, host, now=now, lease_seconds=gate.lease_seconds, besides=mine
            )
            ordered = [i for i in mine if i in held] + [i for i in mine if i not in held]
            granted = ordered[: max(0, free)]
            denied = ordered[max(0, free) :]
            if granted:
                conn.execute(
                    update(QueueItem)
                    .where(mine_only, QueueItem.id.in_(granted))
                    .values(upstream_host=host, handed_out_at=now, waiting_upstream=None)
                )
            if denied:
                conn.execute(
                    update(QueueItem)
                    .where(
                        mine_only,
                        QueueItem.id.in_(denied),
                        or_(
                            QueueItem.waiting_upstream.is_(None),
                            QueueItem.waiting_upstream != host,
                        ),
                    )
                    .values(waiting_upstream=host)
                )
            allowed.update(granted)
            waiting.update({i: host for i in denied})
    return allowed, waiting


def wake_waiters(host: str | None, *, session: Session) -> None:
    """A download that held a slot of `host` ended: wake the long-polls of items waiting for it."""
    if host is None:
        return
    waiting = list(
        session.scalars(
            select(QueueItem.instance_id)
            .where(QueueItem.waiting_upstream == host, QueueItem.state == ItemState.QUEUED.value)
            .distinct()
            .limit(WAKE_LIMIT)
        )
    )
    if not waiting:
        return
    # Their items may be handed out now: the write says so to whoever watches the queue
    # (the server's long-polls and memos), as any write of a queued item does.
    session.execute(
        update(QueueItem)
        .where(
            QueueItem.instance_id.in_(waiting),
            QueueItem.waiting_upstream == host,
            QueueItem.state == ItemState.QUEUED.value,
        )
        .values(waiting_upstream=host)
    )


def take_slot(
    gate: UpstreamGate | None,
    host: str,
    holder: str,
    *,
    now: datetime,
    seconds: float | None = None,
) -> bool:
    """Take (or renew) one fleet-wide slot of `host` for `holder`, e.g. `mirror:<sha256>`.

    True when taken: hold it by calling again before `seconds` (default: the lease)
    pass, and `release_slot` when done. False when the host is at its cap: try later.
    An uncapped host (or no caps at all: `gate` None) answers True and records nothing.
    """
    host = host.rstrip(".").lower()
    if gate is None or host not in gate.caps:
        return True
    expires = now + timedelta(seconds=seconds or gate.lease_seconds)
    with gate.begin() as conn:
        _lock_host(conn, host)
        conn.execute(delete(UpstreamSlot).where(UpstreamSlot.expires_at <= now))
        renewed = conn.execute(
            update(UpstreamSlot)
            .where(UpstreamSlot.holder == holder, UpstreamSlot.host == host)
            .values(expires_at=expires)
        ).rowcount
        if renewed:
            return True
        busy = in_flight(conn, host, now=now, lease_seconds=gate.lease_seconds)
        if busy >= gate.caps[host]:
            return False
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(UpstreamSlot)
            .values(holder=holder, host=host, expires_at=expires)
            .on_conflict_do_update(
                index_elements=["holder"], set_={"host": host, "expires_at": expires}
            )
        )
    return True


def release_slot(gate: UpstreamGate | None, holder: str) -> None:
    """Give back the slot `holder` took with `take_slot` (nothing if it holds none)."""
    if gate is None:
        return
    with gate.begin() as conn:
        conn.execute(delete(UpstreamSlot).where(UpstreamSlot.holder == holder))
