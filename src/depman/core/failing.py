"""Instances whose downloads keep failing: a wrong allowlist, a missing token, a full disk.

Such an instance stays live (its agent heartbeats), so without this rule it would
keep getting jobs that then wait on downloads that will not succeed. Placement
ranks it after every healthy candidate and the dashboard flags it; it is never
excluded, so a fleet whose every instance fails still places jobs.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from depman.core.states import ItemState, Op
from depman.store.models import QueueItem

# Downloads that finished this recently count; at least this many failed and none succeeded.
FAILING_WINDOW = timedelta(hours=1)
FAILING_MIN_FAILURES = 2


def failing_instances(
    instance_ids: Collection[str] | None, *, session: Session, now: datetime
) -> set[str]:
    """Of `instance_ids` (None: every instance), those whose recent downloads all failed."""
    if instance_ids is not None and not instance_ids:
        return set()
    succeeded = func.sum(case((QueueItem.state == ItemState.SUCCEEDED.value, 1), else_=0))
    failed = func.sum(case((QueueItem.state == ItemState.FAILED.value, 1), else_=0))
    query = (
        select(QueueItem.instance_id)
        .where(
            QueueItem.op == Op.DOWNLOAD.value,
            QueueItem.state.in_([ItemState.SUCCEEDED.value, ItemState.FAILED.value]),
            QueueItem.finished_at >= now - FAILING_WINDOW,
        )
        .group_by(QueueItem.instance_id)
        .having(succeeded == 0, failed >= FAILING_MIN_FAILURES)
    )
    if instance_ids is not None:
        query = query.where(QueueItem.instance_id.in_(list(instance_ids)))
    return set(session.connection().execute(query).scalars())
