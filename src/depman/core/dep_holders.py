"""Where a model is: every instance that holds a dep or has a download of it, with the
file's state there (held and verified, downloading, queued, failed, gone)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.catalog import get_dep
from depman.core.overview.rows import as_utc, liveness
from depman.core.states import ItemState, Op
from depman.store.models import DepReceipt, Instance, InstanceDep, QueueItem

# The file's state on an instance that does not hold it, by its download's state.
NOT_HELD = {
    ItemState.QUEUED.value: "queued",
    ItemState.RUNNING.value: "downloading",
    ItemState.FAILED.value: "failed",
    ItemState.CANCELLED.value: "cancelled",
    # Downloaded once, no longer in the inventory: evicted or deleted since.
    ItemState.SUCCEEDED.value: "gone",
}


@dataclass(frozen=True)
class DepLocation:
    """One instance and the dep's file there."""

    instance_id: str
    server_type: str
    instance_status: str  # live, stale, lost, never
    state: str  # held, queued, downloading, failed, cancelled, gone
    kind: str | None = None  # static or dynamic, when held
    since: datetime | None = None  # held since, or the download's last change
    receipt: str | None = None  # "matches" or "differs": the agent's verification receipt
    error: str | None = None  # the failed download's error


def dep_locations(
    dep_id: str, *, session: Session, now: datetime, live_ttl: float
) -> list[DepLocation]:
    """Every instance holding `dep_id` or with a download of it, by instance id."""
    get_dep(dep_id, session=session)  # NotFound for an unknown dep
    held = {
        row.instance_id: row
        for row in session.scalars(select(InstanceDep).where(InstanceDep.dep_id == dep_id))
    }
    items: dict[str, QueueItem] = {}
    for item in session.scalars(
        select(QueueItem)
        .where(QueueItem.dep_id == dep_id, QueueItem.op == Op.DOWNLOAD.value)
        .order_by(QueueItem.id)
    ):
        items[item.instance_id] = item  # the latest download per instance
    receipts = {
        r.instance_id: r.matches_catalog
        for r in session.scalars(select(DepReceipt).where(DepReceipt.dep_id == dep_id))
    }
    ids = sorted(set(held) | set(items))
    instances = {
        i.instance_id: i
        for i in session.scalars(select(Instance).where(Instance.instance_id.in_(ids)))
    }
    out = []
    for instance_id in ids:
        inst = instances.get(instance_id)
        if inst is None:
            continue
        status = liveness(
            as_utc(inst.last_heartbeat_at), now, live_ttl, lost=inst.lost_at is not None
        )
        matches = receipts.get(instance_id)
        receipt = None if matches is None else ("matches" if matches else "differs")
        if instance_id in held:
            row = held[instance_id]
            out.append(
                DepLocation(
                    instance_id,
                    inst.server_type,
                    status,
                    "held",
                    kind=row.kind,
                    since=as_utc(row.since),
                    receipt=receipt,
                )
            )
            continue
        item = items[instance_id]
        state = NOT_HELD.get(item.state, item.state)
        out.append(
            DepLocation(
                instance_id,
                inst.server_type,
                status,
                state,
                since=as_utc(item.updated_at),
                error=item.error if state in ("failed", "cancelled") else None,
            )
        )
    return out
