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

A wide silence is taken for the server's or its network's too: when more than
`lost_wide_silence_share` of the registered instances (and at least
WIDE_SILENCE_MIN_INSTANCES) have been quiet for half the timeout, the silent ones
are kept, and lost only once `lost_wide_silence_seconds` pass without a word.
A control plane cut off for a few minutes thus fails no running job and voids no
token, and its agents need not all register again at once. Each sweep that keeps
an instance stamps it (`silence_grace_at`), and its timeout counts from that stamp
too, so as the silence ends, the agents still reconnecting get the whole timeout
to do it (Kubernetes' node controller likewise restarts every node's grace period
when a zone comes out of a full disruption).

Liveness is the later of the heartbeat and registration times on the instance
row: every agent heartbeats at least every `heartbeat_seconds`, and a heartbeat
answered from memory reaches the row within `heartbeat_flush_seconds`. Rows are
taken with SKIP LOCKED and re-checked under the lock, so two server processes never
apply one loss twice, and a heartbeat that commits first keeps its instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
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
# A silence is wide only with at least this many quiet instances in it: in a small
# fleet, half of it going quiet together is as likely to be the instances.
WIDE_SILENCE_MIN_INSTANCES = 10


@dataclass(frozen=True)
class LostSweep:
    """What one sweep did with the silent instances."""

    lost: list[str] = field(default_factory=list)
    # Silent past `instance_lost_seconds` but kept, the silence being wide (not those
    # still within the timeout a wide silence's last sweep gave them).
    held: int = 0
    # Counted when anyone is silent: the registered instances not lost, and of them
    # those quiet for half the timeout.
    registered: int = 0
    quiet: int = 0


def _heard() -> Any:
    """The later of an instance's heartbeat and registration times, as SQL.

    The later of the two: an agent that registers again after a loss keeps its old
    heartbeat time until its first new heartbeat is written, and a slow server must
    not take that old time for silence (it would void the new token at once).
    """
    return case(
        (
            or_(
                Instance.last_heartbeat_at.is_(None),
                Instance.registered_at > Instance.last_heartbeat_at,
            ),
            Instance.registered_at,
        ),
        else_=Instance.last_heartbeat_at,
    )


def sweep_lost_instances(
    *,
    session: Session,
    policy: Policy,
    now: datetime,
    listening_since: datetime | None = None,
) -> LostSweep:
    """Mark the silent instances lost and move their work away, unless the silence is wide.

    `listening_since`: when this server process began to hear agents. Until it has
    listened for `instance_lost_seconds`, nobody is lost: after the control plane was
    down, every row's last heartbeat is old, and the silence was the server's.
    """
    cutoff = now - timedelta(seconds=policy.instance_lost_seconds)
    if listening_since is not None and listening_since > cutoff:
        return LostSweep()
    heard = _heard()
    silent = session.execute(
        select(Instance, heard)
        .where(
            Instance.lost_at.is_(None),
            Instance.agent_token_hash.is_not(None),  # never registered: nothing to lose
            heard < cutoff,
        )
        .order_by(Instance.instance_id)
        .with_for_update(skip_locked=True)
    ).all()
    if not silent:
        return LostSweep()
    registered, quiet = _fleet_quiet(session, policy, now, heard)
    if quiet >= WIDE_SILENCE_MIN_INSTANCES and quiet > policy.lost_wide_silence_share * registered:
        # Every sweep of the silence stamps what it keeps: as it ends, the agents still
        # reconnecting get the whole timeout from its last sweep.
        wide_seconds = max(policy.lost_wide_silence_seconds, policy.instance_lost_seconds)
        wide_cutoff = now - timedelta(seconds=wide_seconds)
        held = [row for row, last in silent if last >= wide_cutoff]
        for row in held:
            row.silence_grace_at = now
        rows = [row for row, last in silent if last < wide_cutoff]
    else:
        held = []
        rows = [row for row, _last in silent if not _in_grace(row, cutoff)]
    if rows:
        lose_instances(rows, session=session, policy=policy, now=now)
    return LostSweep([row.instance_id for row in rows], len(held), registered, quiet)


def _in_grace(row: Instance, cutoff: datetime) -> bool:
    """Kept by a wide silence's sweep within the timeout: not silent that long yet."""
    return row.silence_grace_at is not None and row.silence_grace_at >= cutoff


def _fleet_quiet(session: Session, policy: Policy, now: datetime, heard: Any) -> tuple[int, int]:
    """(registered instances not lost, those of them quiet for half the timeout).

    Half: when the first agents of a fleet cut off together pass the timeout, the others
    (their heartbeats spread over one interval) are that quiet already, so the share
    sees the whole silence from its first sweep.
    """
    if policy.lost_wide_silence_share >= 1:  # the guard is off: spare the count
        return 0, 0
    quiet_cutoff = now - timedelta(seconds=policy.instance_lost_seconds / 2)
    registered, quiet = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((heard < quiet_cutoff, 1), else_=0)), 0),
        ).where(Instance.lost_at.is_(None), Instance.agent_token_hash.is_not(None))
    ).one()
    return int(registered), int(quiet)


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
