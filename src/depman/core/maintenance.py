"""The periodic sweep: stale running items, backoffs, retry windows, timeouts, pending jobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.jobs import expire_jobs, on_dep_failed
from depman.core.policy import Policy
from depman.core.queue import requeue_stale_running, wake_due_items
from depman.core.retries import expire_retry_windows
from depman.core.scheduler import place_pending_jobs
from depman.core.states import Op

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep did."""

    items_failed: int = 0
    jobs_expired: int = 0
    jobs_placed: int = 0
    pending_server_types: set[str] = field(default_factory=set)


def sweep(*, session: Session, policy: Policy, now: datetime | None = None) -> SweepReport:
    """One maintenance pass in one transaction (the caller commits)."""
    now = now or utcnow()
    report = SweepReport()
    failed = requeue_stale_running(
        session=session,
        timeout_seconds=policy.running_timeout_seconds,
        max_attempts=policy.max_item_attempts,
        now=now,
    )
    failed += expire_retry_windows(session=session, policy=policy, now=now)
    for item in failed:
        report.items_failed += 1
        if item.op == Op.DOWNLOAD.value:
            on_dep_failed(
                item.instance_id,
                item.dep_id,
                item.error or "stale",
                session=session,
                policy=policy,
                now=now,
            )
    wake_due_items(session=session, now=now)
    report.jobs_expired = expire_jobs(session=session, policy=policy, now=now)
    report.jobs_placed, report.pending_server_types = place_pending_jobs(
        session=session, policy=policy, now=now
    )
    return report
