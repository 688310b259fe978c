"""Operator actions on queue items, instances and jobs; each is recorded in the audit log.

- cancel an item: a queued one ends at once (`cancelled`, the job failure policy
  runs); a running one keeps running with a `cancelReason` until the agent, which
  learns it from the queue-item check, reports `cancelled`;
- retry a failed (or backing-off) item now: a new generation with `forceRetry`,
  which field agents 0.9.18+ honour despite their local backoff;
- delete a dep from an instance: a `delete` item (field agents 0.9.15+, depman's
  agent); a static or pinned dep only with `force`;
- cancel a job (it fails with the operator's reason); drain an instance (no new
  jobs are placed there, the ones it has finish).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.audit import record_action
from depman.core.clock import utcnow
from depman.core.instances import get_instance
from depman.core.jobs import fail_job, get_job, on_dep_failed
from depman.core.policy import Policy
from depman.core.profiles import static_dep_ids
from depman.core.queue import ERROR_MAX_CHARS, enqueue
from depman.core.scheduler import record
from depman.core.states import PRIORITY_JOB, TERMINAL_JOB_STATES, ItemState, Op
from depman.errors import Conflict, InvalidTransition, NotFound
from depman.store.models import Dep, Instance, InstanceDep, Job, QueueItem, ServerType

REASON_MAX_CHARS = 300


def _item(instance_id: str, dep_id: str, *, session: Session) -> QueueItem:
    get_instance(instance_id, session=session)
    row = session.scalar(
        select(QueueItem)
        .where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
        .with_for_update()
    )
    if row is None:
        raise NotFound(f"instance {instance_id!r} has no queue item for dep {dep_id!r}")
    return row


def cancel_item(
    instance_id: str,
    dep_id: str,
    reason: str,
    *,
    actor: str,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> QueueItem:
    """Cancel an open item; the reason reaches the agent (queue-item check)."""
    now = now or utcnow()
    row = _item(instance_id, dep_id, session=session)
    if row.state not in (ItemState.QUEUED.value, ItemState.RUNNING.value):
        raise InvalidTransition(f"item {dep_id!r} on {instance_id!r} is {row.state}, not open")
    reason = (reason or "cancelled by operator")[:REASON_MAX_CHARS]
    row.cancel_reason = reason
    row.updated_at = now
    if row.state == ItemState.QUEUED.value:
        # Not started: no agent to wait for (an agent backing off on it learns the
        # reason from its queue-item check and drops the retry).
        row.state = ItemState.CANCELLED.value
        row.error = f"Dependency queue item cancelled: {reason}"[:ERROR_MAX_CHARS]
        row.finished_at = now
        row.next_attempt_at = None
        if row.op == Op.DOWNLOAD.value:
            on_dep_failed(instance_id, dep_id, row.error, session=session, policy=policy, now=now)
    record_action(
        actor,
        "cancel_item",
        session=session,
        instance_id=instance_id,
        dep_id=dep_id,
        detail={"reason": reason, "itemState": row.state, "generation": row.generation},
        now=now,
    )
    return row


def retry_item(
    instance_id: str,
    dep_id: str,
    after_ms: int | None,
    *,
    actor: str,
    session: Session,
    now: datetime | None = None,
) -> QueueItem:
    """Retry a failed, cancelled or backing-off item now (or after `after_ms`)."""
    now = now or utcnow()
    row = _item(instance_id, dep_id, session=session)
    if row.state in (ItemState.FAILED.value, ItemState.CANCELLED.value):
        enqueue(instance_id, dep_id, Op(row.op), priority=row.priority, session=session, now=now)
    elif row.state != ItemState.QUEUED.value:
        raise InvalidTransition(
            f"item {dep_id!r} on {instance_id!r} is {row.state}; only a failed, cancelled "
            "or queued item is retried"
        )
    row.next_attempt_at = None
    row.force_retry = True
    row.force_retry_after_ms = after_ms
    row.updated_at = now
    record_action(
        actor,
        "retry_item",
        session=session,
        instance_id=instance_id,
        dep_id=dep_id,
        detail={"afterMs": after_ms, "generation": row.generation},
        now=now,
    )
    return row


def delete_dep(
    instance_id: str,
    dep_id: str,
    force: bool,
    *,
    actor: str,
    session: Session,
    now: datetime | None = None,
) -> QueueItem:
    """Queue the removal of a dep's file on an instance."""
    now = now or utcnow()
    instance = get_instance(instance_id, session=session)
    if session.get(Dep, dep_id) is None:
        raise NotFound(f"dep {dep_id!r} is not in the catalog")
    held_kind = session.scalar(
        select(InstanceDep.kind).where(
            InstanceDep.instance_id == instance_id, InstanceDep.dep_id == dep_id
        )
    )
    static = held_kind == "static" or dep_id in _profile_static(instance, session=session)
    if static and not force:
        raise Conflict(
            f"dep {dep_id!r} is a static dep of {instance_id!r}'s profile; "
            "delete it only with force (the profile expects it there)"
        )
    if dep_id in (instance.pinned_dep_ids or []) and not force:
        raise Conflict(f"a job on {instance_id!r} needs dep {dep_id!r}; delete it only with force")
    enqueue(instance_id, dep_id, Op.DELETE, priority=PRIORITY_JOB, session=session, now=now)
    row = _item(instance_id, dep_id, session=session)
    record_action(
        actor,
        "delete_dep",
        session=session,
        instance_id=instance_id,
        dep_id=dep_id,
        detail={"force": force, "static": static, "held": held_kind is not None},
        now=now,
    )
    return row


def _profile_static(instance: Instance, *, session: Session) -> list[str]:
    stype = session.get(ServerType, instance.server_type)
    if stype is None or not stype.profile_id:
        return []
    return static_dep_ids([stype.profile_id], session=session).get(stype.profile_id, [])


def cancel_job(
    job_id: str,
    reason: str,
    *,
    actor: str,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> Job:
    """Fail an open job with the operator's reason; its instance takes the next one."""
    now = now or utcnow()
    job = get_job(job_id, session=session, lock=True)
    if job.state in TERMINAL_JOB_STATES:
        raise InvalidTransition(f"job {job_id!r} is already {job.state}")
    reason = (reason or "cancelled by operator")[:REASON_MAX_CHARS]
    record(job, "cancelled", now, job.instance_id, reason=reason, by=actor)
    fail_job(job, f"cancelled by operator: {reason}", session=session, policy=policy, now=now)
    record_action(
        actor,
        "cancel_job",
        session=session,
        instance_id=job.instance_id,
        job_id=job_id,
        detail={"reason": reason},
        now=now,
    )
    return job


def set_drained(
    instance_id: str,
    drained: bool,
    *,
    actor: str,
    session: Session,
    now: datetime | None = None,
) -> Instance:
    """Drain (no new jobs) or reopen an instance."""
    now = now or utcnow()
    row = session.scalar(
        select(Instance).where(Instance.instance_id == instance_id).with_for_update()
    )
    if row is None:
        raise NotFound(f"instance {instance_id!r} does not exist")
    row.drained = drained
    record_action(
        actor,
        "drain" if drained else "undrain",
        session=session,
        instance_id=instance_id,
        now=now,
    )
    return row
