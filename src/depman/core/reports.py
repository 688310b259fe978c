"""What an agent's reports do beyond their own rows: status → jobs, heartbeat → placement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.jobs import on_dep_failed
from depman.core.policy import Policy
from depman.core.queue import Transition, apply_item_state
from depman.core.states import ItemState, Op
from depman.store.models import Instance


@dataclass(frozen=True)
class StatusReport:
    """One `POST /dependencies/status` body, snake_cased."""

    item_id: str
    state: str
    dep_id: str | None = None
    op: str | None = None
    error: str | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_used_bytes: int | None = None
    dynamic_bytes_used: int | None = None


def apply_status(
    instance_id: str,
    report: StatusReport,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> Transition:
    """Apply a status report: move the item, keep the disk figures, handle a failed download."""
    now = now or utcnow()
    scalars = {
        name: getattr(report, name)
        for name in ("disk_total_bytes", "disk_free_bytes", "disk_used_bytes", "dynamic_bytes_used")
        if getattr(report, name) is not None
    }
    if scalars:
        session.execute(
            update(Instance).where(Instance.instance_id == instance_id).values(**scalars)
        )
    result = apply_item_state(
        instance_id, report.item_id, report.state, report.error, session=session, now=now
    )
    item = result.item
    if (
        result.applied
        and item is not None
        and item.state == ItemState.FAILED.value
        and item.op == Op.DOWNLOAD.value
    ):
        on_dep_failed(
            instance_id,
            item.dep_id,
            item.error or "failed",
            session=session,
            policy=policy,
            now=now,
        )
    return result
