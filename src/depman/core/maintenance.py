"""The periodic sweep: lost instances, stale running items, backoffs, retries, retry windows,
timeouts, pending jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.jobs import expire_jobs
from depman.core.lost import sweep_lost_instances
from depman.core.policy import Policy
from depman.core.queue import requeue_stale_running, wake_due_items
from depman.core.reports import on_item_failed
from depman.core.retries import expire_retry_windows
from depman.core.scheduler import place_pending_jobs
from depman.core.static_retries import retry_due_items

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep did."""

    instances_lost: list[str] = field(default_factory=list)
    items_retried: int = 0
    items_failed: int = 0
    jobs_expired: int = 0
    jobs_placed: int = 0
    pending_server_types: set[str] = field(default_factory=set)
    # Seconds each step took, in order: where a slow sweep spent its time.
    step_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step of the sweep."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[name] = time.perf_counter() - started


def sweep(*, session: Session, policy: Policy, now: datetime | None = None) -> SweepReport:
    """One maintenance pass in one transaction (the caller commits)."""
    now = now or utcnow()
    report = SweepReport()
    with report.step("lost"):
        report.instances_lost = sweep_lost_instances(session=session, policy=policy, now=now)
    with report.step("stale"):
        failed = requeue_stale_running(
            session=session,
            timeout_seconds=policy.running_timeout_seconds,
            max_attempts=policy.max_item_attempts,
            now=now,
        )
    with report.step("retry_windows"):
        failed += expire_retry_windows(session=session, policy=policy, now=now)
        for item in failed:
            report.items_failed += 1
            on_item_failed(
                item.instance_id,
                item.dep_id,
                item.op,
                item.error or "stale",
                session=session,
                policy=policy,
                now=now,
            )
    with report.step("retries"):
        report.items_retried = retry_due_items(session=session, now=now)
        wake_due_items(session=session, now=now)
    with report.step("expiry"):
        report.jobs_expired = expire_jobs(session=session, policy=policy, now=now)
    with report.step("placement"):
        report.jobs_placed, report.pending_server_types = place_pending_jobs(
            session=session, policy=policy, now=now
        )
    return report
