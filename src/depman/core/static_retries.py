"""Retries of failed static and prefetch downloads, with backoff.

A static dep that failed to download (an origin down, a token missing) used to
stay failed until its agent registered again. Now each failure sets the item's
`next_attempt_at` (`retry_backoff_seconds`, doubling with each failure in a row,
at most `retry_backoff_max_seconds`); the maintenance sweep queues it again when
that time comes, if the instance is not lost, the dep is still static for it and
not held. The queue listing shows the time (`nextAttemptAt`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.profiles import static_dep_ids_of_type
from depman.core.queue import start_generation
from depman.core.states import PRIORITY_PREFETCH, ItemState, Op
from depman.store.models import Instance, InstanceDep, QueueItem


def retry_delay_seconds(failures: int, base: float, ceiling: float) -> float:
    """Wait before the next attempt after `failures` failures in a row: base, doubling."""
    return min(ceiling, base * 2 ** max(0, min(failures, 32) - 1))


def schedule_retry(
    item: QueueItem, *, base: float, ceiling: float, now: datetime
) -> datetime | None:
    """A failed static/prefetch download: count the failure and set when it is tried again.

    Items a job waits for are not retried here: the job moves (`on_dep_failed`).
    """
    if item.op != Op.DOWNLOAD.value or item.priority != PRIORITY_PREFETCH:
        return None
    item.failures = (item.failures or 0) + 1
    item.next_attempt_at = now + timedelta(
        seconds=retry_delay_seconds(item.failures, base, ceiling)
    )
    return item.next_attempt_at


def retry_due_items(*, session: Session, now: datetime | None = None) -> int:
    """Queue again the failed static/prefetch items whose retry time has come."""
    now = now or utcnow()
    rows = session.execute(
        select(QueueItem, Instance.server_type)
        .join(Instance, Instance.instance_id == QueueItem.instance_id)
        .where(
            QueueItem.state == ItemState.FAILED.value,
            QueueItem.next_attempt_at.is_not(None),
            QueueItem.next_attempt_at <= now,
            Instance.lost_at.is_(None),
        )
        .with_for_update(of=QueueItem, skip_locked=True)
    ).all()
    static: dict[str, set[str]] = {}
    retried = 0
    for item, server_type in rows:
        if server_type not in static:
            conn = session.connection()
            static[server_type] = set(static_dep_ids_of_type(server_type, conn=conn))
        held = session.scalar(
            select(InstanceDep.dep_id).where(
                InstanceDep.instance_id == item.instance_id, InstanceDep.dep_id == item.dep_id
            )
        )
        item.next_attempt_at = None
        if item.dep_id not in static[server_type] or held is not None:
            continue  # no longer wanted, or there after all
        start_generation(item, session=session, now=now)
        retried += 1
    return retried
