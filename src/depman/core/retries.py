"""Retryable failures later field agents report: count them, respect their backoff, give up.

From 0.3.0 on a field agent reports every retryable failure (sha mismatch, 5xx,
timeout) as `retrying` and retries on its own schedule: 2 minutes doubling to 30,
announced in the error text ("next attempt in ~<N>s"). Before, depman answered
422 and the failure never arrived: the item stayed `running` and its job waited
forever. Now a `retrying` report counts an attempt and keeps the error on the item,
which waits (`next_attempt_at`) instead of being handed out on every poll; past
`max_item_attempts`, or when the dep has kept failing for longer than the retry
window, the item fails and the job failure policy runs (`core/reports.py`).

When the agent says it is backing off on an item the server has just queued again
(a fresh generation, or an operator's forced retry), the answer tells it to forget
its local failure (`clearFailedDepId`) instead of counting an attempt.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.policy import Policy
from depman.core.queue import ERROR_MAX_CHARS, Transition, parse_item_id
from depman.core.states import OPEN_ITEM_STATES, ItemState
from depman.store.models import Instance, QueueItem

# The field agents' own schedule, used when the error text does not announce one.
BACKOFF_FIRST_SECONDS = 120.0
BACKOFF_MAX_SECONDS = 1800.0
NEXT_ATTEMPT = re.compile(r"next attempt in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


def backoff_seconds(error: str | None, attempts: int) -> float:
    """How long the agent waits before its next attempt: as it announced, else its schedule."""
    match = NEXT_ATTEMPT.search(error or "")
    if match:
        return min(float(match.group(1)), BACKOFF_MAX_SECONDS)
    return min(BACKOFF_FIRST_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS)


def _window_over(row: QueueItem, policy: Policy, now: datetime) -> bool:
    return row.first_failed_at is not None and (
        now - row.first_failed_at >= timedelta(seconds=policy.item_retry_window_seconds)
    )


def apply_retrying(
    instance_id: str,
    item_id: str,
    error: str | None,
    *,
    session: Session,
    policy: Policy,
    now: datetime,
) -> Transition:
    """Apply a `retrying` report; the answer's state is `failed` when the item gave up."""
    parsed = parse_item_id(item_id)
    if parsed is None:
        return Transition(False, reason="unknown itemId")
    dep_id, gen = parsed
    row = session.scalar(
        select(QueueItem)
        .where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
        .with_for_update()
    )
    if row is None:
        return Transition(False, reason="no such item")
    if row.generation != gen:
        return Transition(
            False,
            row.state,
            row.op,
            dep_id,
            reason="old generation",
            clear_failed=row.state == ItemState.QUEUED.value,
        )
    if row.state not in OPEN_ITEM_STATES:
        return Transition(False, row.state, row.op, dep_id, reason=f"retrying after {row.state}")
    message = (error or "retrying")[:ERROR_MAX_CHARS]
    fresh = row.attempts == 0 and row.first_failed_at is None
    if row.state == ItemState.QUEUED.value and (fresh or row.force_retry):
        # Handed out fresh or forced: the agent's backoff is from an older failure.
        # Said once per generation (first_failed_at), so a confused agent cannot spin.
        row.first_failed_at = now
        row.force_retry = False
        row.error = message
        row.updated_at = now
        return Transition(False, row.state, row.op, dep_id, row.error, "stale backoff", True)
    if row.state == ItemState.RUNNING.value:
        row.attempts += 1  # an attempt really ran and failed
    row.error = message
    row.first_failed_at = row.first_failed_at or now
    row.updated_at = now
    row.started_at = None
    row.last_progress_at = None
    if row.attempts >= policy.max_item_attempts or _window_over(row, policy, now):
        row.state = ItemState.FAILED.value
        row.finished_at = now
        row.next_attempt_at = None
    else:
        row.state = ItemState.QUEUED.value
        row.next_attempt_at = now + timedelta(seconds=backoff_seconds(error, row.attempts))
    return Transition(
        True,
        row.state,
        row.op,
        dep_id,
        row.error,
        upstream_host=row.upstream_host,
        taken_at=row.enqueued_at,
    )


def expire_retry_windows(*, session: Session, policy: Policy, now: datetime) -> list[QueueItem]:
    """Open items whose dep the heartbeat still lists as failed past the window: failed."""
    cutoff = now - timedelta(seconds=policy.item_retry_window_seconds)
    rows = session.execute(
        select(QueueItem, Instance.failed_dep_ids)
        .join(Instance, Instance.instance_id == QueueItem.instance_id)
        .where(QueueItem.state.in_(OPEN_ITEM_STATES), QueueItem.first_failed_at < cutoff)
        .with_for_update(of=QueueItem, skip_locked=True)
    ).all()
    failed = []
    for row, failed_ids in rows:
        if row.dep_id not in (failed_ids or []):
            continue  # not failing right now; its next `retrying` report decides
        row.state = ItemState.FAILED.value
        row.finished_at = now
        row.updated_at = now
        row.next_attempt_at = None
        seconds = policy.item_retry_window_seconds
        row.error = (f"still failing after {seconds:g}s: {row.error or 'retrying'}")[
            :ERROR_MAX_CHARS
        ]
        failed.append(row)
    return failed
