"""Instances whose downloads keep failing: a wrong allowlist, a missing token, a full disk.

Such an instance stays live (its agent heartbeats), so without this rule it would
keep getting jobs that then wait on downloads that will not succeed. Placement
ranks it after every healthy candidate and the dashboard flags it; it is never
excluded, so a fleet whose every instance fails still places jobs.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, exists, func, select
from sqlalchemy.orm import Session

from depman.core.states import ItemState, Op
from depman.store.models import QueueItem, UtcDateTime

# Downloads that finished this recently count; at least this many failed and none succeeded.
FAILING_WINDOW = timedelta(hours=1)
FAILING_MIN_FAILURES = 2


def _failing_statement(since: Any) -> Any:
    """Instances whose downloads finished since `since` all failed (the rule, in one place)."""
    succeeded = func.sum(case((QueueItem.state == ItemState.SUCCEEDED.value, 1), else_=0))
    failed = func.sum(case((QueueItem.state == ItemState.FAILED.value, 1), else_=0))
    return (
        select(QueueItem.instance_id)
        .where(
            QueueItem.op == Op.DOWNLOAD.value,
            QueueItem.state.in_([ItemState.SUCCEEDED.value, ItemState.FAILED.value]),
            QueueItem.finished_at >= since,
        )
        .group_by(QueueItem.instance_id)
        .having(succeeded == 0, failed >= FAILING_MIN_FAILURES)
    )


# Built once: the overviews ask on every page.
_FAILING_ANYWHERE = _failing_statement(bindparam("p_since", type_=UtcDateTime()))
_FAILING_AMONG = _FAILING_ANYWHERE.where(
    QueueItem.instance_id.in_(bindparam("p_ids", expanding=True))
)


def failing_clause(instance_id: Any, since: Any) -> Any:
    """Whether the instance `instance_id` (a column) fails, as a column of a statement."""
    return exists(_failing_statement(since).where(QueueItem.instance_id == instance_id))


def failing_instances(
    instance_ids: Collection[str] | None, *, session: Session, now: datetime
) -> set[str]:
    """Of `instance_ids` (None: every instance), those whose recent downloads all failed."""
    if instance_ids is not None and not instance_ids:
        return set()
    params: dict[str, Any] = {"p_since": now - FAILING_WINDOW}
    if instance_ids is None:
        statement = _FAILING_ANYWHERE
    else:
        statement = _FAILING_AMONG
        params["p_ids"] = list(instance_ids)
    return set(session.connection().execute(statement, params).scalars())
