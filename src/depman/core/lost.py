"""Lost instances: an agent silent for `instance_lost_seconds` gives up what it held.

An instance whose agent died (a crashed container, a reclaimed GPU) would keep
its reserved jobs waiting for hours while other instances of its type are free.
The maintenance sweep marks it `lost` instead, in one transaction per sweep:

- its `waiting_deps` and `ready` jobs are placed again on the best live instance
  of their type (or go back to pending), with a history entry saying why;
- a `running` job fails with `instance lost` (the caller decides to resubmit);
- its open queue items are cancelled and its pins released;
- its agent token is voided, so an agent that comes back gets a 401, registers
  again (which clears `lost_at`) and starts clean.

A server that starts (or comes back after an outage) loses nobody until it has
listened for `instance_lost_seconds` itself: its agents get that long to reach it.
Liveness is the later of the heartbeat and registration times on the instance
row: every agent heartbeats at least every `heartbeat_seconds`, and a heartbeat
answered from memory reaches the row within `heartbeat_flush_seconds`. Rows are
taken with SKIP LOCKED and re-checked under the lock, so two server processes never
apply one loss twice, and a heartbeat that commits first keeps its instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import case, or_, select, update
from sqlalchemy.orm import Session

from depman.core.chunks import chunks
from depman.core.jobs import fail_job
from depman.core.pins import refresh_pins
from depman.core.policy import Policy
from depman.core.scheduler import place_job, record
from depman.core.states import ACTIVE_JOB_STATES, OPEN_ITEM_STATES, ItemState, JobState
from depman.store.models import Instance, Job, QueueItem

LOST_ERROR = "instance lost"
CANCEL_REASON = "cancelled: instance lost"


def sweep_lost_instances(
    *,
    session: Session,
    policy: Policy,
    now: datetime,
    listening_since: datetime | None = None,
) -> list[str]:
    """Mark the silent instances lost and move their work away; answers their ids.

    `listening_since`: when this server process began to hear agents. Until it has
    listened for `instance_lost_seconds`, nobody is lost: after the control plane was
    down, every row's last heartbeat is old, and the silence was the server's.
    """
    cutoff = now - timedelta(seconds=policy.instance_lost_seconds)
    if listening_since is not None and listening_since > cutoff:
        return []
    # The later of the two: an agent that registers again after a loss keeps its old
    # heartbeat time until its first new heartbeat is written, and a slow server
    # must not take that old time for silence (it would void the new token at once).
    last_sign = case(
        (
            or_(
                Instance.last_heartbeat_at.is_(None),
                Instance.registered_at > Instance.last_heartbeat_at,
            ),
            Instance.registered_at,
        ),
        else_=Instance.last_heartbeat_at,
    )
    rows = session.scalars(
        select(Instance)
        .where(
            Instance.lost_at.is_(None),
            Instance.agent_token_hash.is_not(None),  # never registered: nothing to lose
            last_sign < cutoff,
        )
        .order_by(Instance.instance_id)
        .with_for_update(skip_locked=True)
    ).all()
    if rows:
        lose_instances(rows, session=session, policy=policy, now=now)
    return [row.instance_id for row in rows]


def lose_instances(
    rows: Sequence[Instance], *, session: Session, policy: Policy, now: datetime
) -> None:
    """Apply the loss of instances whose rows the caller holds locked.

    What every lost instance undergoes is one statement for all of them, or for each
    slice of them (`chunks`: a wide silence loses hundreds at once, and their rows
    stay locked until the sweep's step commits); only the instances that had active
    jobs are handled one by one.
    """
    jobs_of: dict[str, list[Job]] = {}
    for part in chunks(rows):
        ids = [row.instance_id for row in part]
        session.execute(
            update(QueueItem)
            .where(QueueItem.instance_id.in_(ids), QueueItem.state.in_(OPEN_ITEM_STATES))
            .values(
                state=ItemState.CANCELLED.value,
                error=CANCEL_REASON,
                finished_at=now,
                updated_at=now,
                next_attempt_at=None,
            )
        )
        for job in session.scalars(
            select(Job)
            .where(Job.instance_id.in_(ids), Job.state.in_(ACTIVE_JOB_STATES))
            .order_by(Job.created_at, Job.job_id)
            .with_for_update()
        ):
            jobs_of.setdefault(job.instance_id or "", []).append(job)
    for row in rows:
        row.lost_at = now
        row.agent_token_hash = None
        row.inventory_digest = None
        row.downloading_dep_ids = []
        row.active_downloads = []
        if row.instance_id not in jobs_of and row.pinned_dep_ids:
            row.pinned_dep_ids = []  # pins are the deps of active jobs, and it has none
    # All of them are marked before any job moves (`refresh_pins` flushes the marks),
    # so no job moves onto an instance this sweep is losing.
    for row in rows:
        jobs = jobs_of.get(row.instance_id)
        if jobs:
            _move_jobs_away(row.instance_id, jobs, session=session, policy=policy, now=now)


def _move_jobs_away(
    instance_id: str, jobs: list[Job], *, session: Session, policy: Policy, now: datetime
) -> None:
    """A lost instance's active jobs: a running one fails, the others are placed elsewhere."""
    silent = policy.instance_lost_seconds
    reason = f"instance {instance_id} lost: no heartbeat for {silent:g}s"
    moving = []
    for job in jobs:
        if job.state == JobState.RUNNING.value:
            fail_job(job, LOST_ERROR, session=session, policy=policy, now=now)
            continue
        record(job, "instance_lost", now, instance_id, reason=reason)
        job.state = JobState.PENDING.value
        job.instance_id = None
        job.ready_at = None
        job.updated_at = now
        moving.append(job)
    refresh_pins(instance_id, session=session)
    for job in moving:
        if job.state != JobState.PENDING.value:
            continue  # a slot freed above (the failed running job) already placed it
        # Not its fault: a move after a loss is not limited by the placement budget.
        if not place_job(job, session=session, policy=policy, now=now, exclude={instance_id}):
            record(job, "pending", now, reason="no live instance of this type has a free slot")
