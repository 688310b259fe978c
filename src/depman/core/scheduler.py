"""Placing jobs: rank live instances with a free slot, lock the chosen row, queue what it lacks."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from depman.core.catalog import missing_dep_ids, validate_id
from depman.core.clock import isoformat, utcnow
from depman.core.pins import refresh_pins
from depman.core.placement import Candidate, missing_deps, rank_candidates
from depman.core.policy import Policy
from depman.core.queue import enqueue
from depman.core.signals import mark_job, mark_pending
from depman.core.states import ACTIVE_JOB_STATES, OPEN_ITEM_STATES, PRIORITY_JOB, JobState, Op
from depman.errors import Conflict, ValidationFailed
from depman.store.models import Dep, Instance, InstanceDep, Job, JobDep, QueueItem, ServerType


def record(
    job: Job, event: str, now: datetime, instance_id: str | None = None, **extra: Any
) -> None:
    """Append one entry to a job's history (where it went and why)."""
    entry: dict[str, Any] = {"at": isoformat(now), "event": event, "instanceId": instance_id}
    entry.update({k: v for k, v in extra.items() if v is not None})
    job.history = [*job.history, entry]


def job_dep_ids(job_id: str, *, session: Session) -> list[str]:
    """A job's deps in their submitted order."""
    return list(
        session.scalars(
            select(JobDep.dep_id).where(JobDep.job_id == job_id).order_by(JobDep.position)
        )
    )


def _candidates(
    job: Job,
    dep_ids: list[str],
    exclude: Collection[str],
    *,
    session: Session,
    cutoff: datetime,
    only: str | None = None,
) -> list[Candidate]:
    live: tuple[Any, ...] = (
        Instance.server_type == job.server_type,
        Instance.last_heartbeat_at >= cutoff,
        # A re-registered agent has not yet said what it holds: its inventory rows are
        # from before the restart, and files may have gone meanwhile (e2e crash test).
        or_(Instance.registered_at.is_(None), Instance.last_heartbeat_at >= Instance.registered_at),
    )
    if only is not None:
        live = (*live, Instance.instance_id == only)
    server_type = session.get(ServerType, job.server_type)
    max_active = server_type.max_active_jobs if server_type else 1
    instances = session.execute(
        select(Instance.instance_id, Instance.disk_free_bytes).where(*live)
    ).all()
    active = dict(
        session.execute(
            select(Job.instance_id, func.count())
            .join(Instance, Instance.instance_id == Job.instance_id)
            .where(*live, Job.state.in_(ACTIVE_JOB_STATES))
            .group_by(Job.instance_id)
        ).all()
    )
    held: dict[str, set[str]] = {}
    if dep_ids:
        for instance_id, dep_id in session.execute(
            select(InstanceDep.instance_id, InstanceDep.dep_id)
            .join(Instance, Instance.instance_id == InstanceDep.instance_id)
            .where(*live, InstanceDep.dep_id.in_(dep_ids))
        ):
            held.setdefault(instance_id, set()).add(dep_id)
    queued = dict(
        session.execute(
            select(QueueItem.instance_id, func.sum(func.coalesce(Dep.expected_size_bytes, 0)))
            .join(Instance, Instance.instance_id == QueueItem.instance_id)
            .join(Dep, Dep.dep_id == QueueItem.dep_id)
            .where(*live, QueueItem.state.in_(OPEN_ITEM_STATES), QueueItem.op == Op.DOWNLOAD.value)
            .group_by(QueueItem.instance_id)
        ).all()
    )
    return [
        Candidate(
            instance_id=instance_id,
            held_dep_ids=frozenset(held.get(instance_id, ())),
            queued_bytes=int(queued.get(instance_id) or 0),
            free_bytes=int(free or 0),
        )
        for instance_id, free in instances
        if instance_id not in exclude and active.get(instance_id, 0) < max_active
    ]


def _claim(instance_id: str, server_type: str, *, session: Session, skip_locked: bool) -> bool:
    """Lock the instance row, then re-count its active jobs with what is now committed."""
    locked = session.scalar(
        select(Instance.instance_id)
        .where(Instance.instance_id == instance_id)
        .with_for_update(skip_locked=skip_locked)
    )
    if locked is None:
        return False
    row = session.get(ServerType, server_type)
    max_active = row.max_active_jobs if row else 1
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.instance_id == instance_id, Job.state.in_(ACTIVE_JOB_STATES))
    )
    return (active or 0) < max_active


def place_job(
    job: Job,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
    exclude: Collection[str] = (),
    only: str | None = None,
) -> bool:
    """Reserve the best live instance (or only `only`) for a pending job; queue its deps there."""
    now = now or utcnow()
    dep_ids = job_dep_ids(job.job_id, session=session)
    cutoff = now - timedelta(seconds=policy.live_ttl_seconds)
    candidates = _candidates(job, dep_ids, exclude, session=session, cutoff=cutoff, only=only)
    if not candidates:
        return False
    deps = {
        dep_id: (size, kind)
        for dep_id, size, kind in session.execute(
            select(Dep.dep_id, Dep.expected_size_bytes, Dep.kind).where(Dep.dep_id.in_(dep_ids))
        )
    }
    ranked = rank_candidates(candidates, {d: deps.get(d, (None, ""))[0] for d in dep_ids})
    # Lock only the chosen row (SKIP LOCKED: another placement holds it, try the next);
    # if every row was busy, wait for the best one rather than leave the job pending.
    is_pg = session.get_bind().dialect.name == "postgresql"
    chosen = next(
        (
            c
            for c in ranked
            if _claim(c.instance_id, job.server_type, session=session, skip_locked=is_pg)
        ),
        None,
    )
    if chosen is None and is_pg:
        chosen = next(
            (
                c
                for c in ranked
                if _claim(c.instance_id, job.server_type, session=session, skip_locked=False)
            ),
            None,
        )
    if chosen is None:
        return False
    missing = missing_deps(chosen, dep_ids)
    for dep_id in missing:
        enqueue(
            chosen.instance_id, dep_id, Op.DOWNLOAD, priority=PRIORITY_JOB, session=session, now=now
        )
    for dep_id in dep_ids:
        if dep_id not in missing and deps.get(dep_id, (None, ""))[1] == "dynamic":
            enqueue(
                chosen.instance_id,
                dep_id,
                Op.TOUCH,
                priority=PRIORITY_JOB,
                session=session,
                now=now,
            )
    job.instance_id = chosen.instance_id
    job.placements += 1
    job.placed_at = now
    job.state = JobState.WAITING_DEPS.value if missing else JobState.READY.value
    if not missing:
        job.ready_at = now
    job.updated_at = now
    record(job, "placed", now, chosen.instance_id, missingDepIds=missing)
    refresh_pins(chosen.instance_id, session=session)
    mark_job(session, job.job_id)
    return True


def submit_job(
    server_type: str,
    dep_ids: list[str],
    job_id: str | None = None,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> tuple[Job, bool]:
    """Create a job and place it if an instance is free; answers (job, created).

    Re-submitting the same jobId with the same spec answers the existing job.
    """
    now = now or utcnow()
    if session.get(ServerType, server_type) is None:
        raise ValidationFailed(f"serverType {server_type!r} does not exist")
    dep_ids = list(dict.fromkeys(dep_ids))
    for dep_id in dep_ids:
        validate_id(dep_id, "depIds[]")
    unknown = missing_dep_ids(dep_ids, session=session)
    if unknown:
        raise ValidationFailed(f"depIds not in the catalog: {', '.join(unknown)}")
    if job_id is not None:
        validate_id(job_id, "jobId")
        existing = session.get(Job, job_id)
        if existing is not None:
            same = (
                existing.server_type == server_type
                and job_dep_ids(job_id, session=session) == dep_ids
            )
            if not same:
                raise Conflict(f"job {job_id!r} exists with another serverType or depIds")
            return existing, False
    job = Job(
        job_id=job_id or uuid.uuid4().hex,
        server_type=server_type,
        state=JobState.PENDING.value,
        placements=0,
        history=[],
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.add_all(
        JobDep(job_id=job.job_id, dep_id=dep_id, position=pos) for pos, dep_id in enumerate(dep_ids)
    )
    session.flush()
    record(job, "submitted", now)
    if not place_job(job, session=session, policy=policy, now=now):
        record(job, "pending", now, reason="no live instance of this type has a free slot")
        mark_pending(session, server_type)
    mark_job(session, job.job_id)
    return job, True


def place_pending_jobs(
    *,
    session: Session,
    policy: Policy,
    server_types: Iterable[str] | None = None,
    limit: int = 200,
    now: datetime | None = None,
    only: str | None = None,
) -> tuple[int, set[str]]:
    """Place pending jobs oldest first; answers (placed, server types that still have pending).

    With `only`, the jobs may go to that instance alone (a heartbeat with a free slot:
    the other instances of the type were full when the jobs went pending).
    """
    now = now or utcnow()
    stmt = select(Job).where(Job.state == JobState.PENDING.value)
    if server_types is not None:
        types = list(server_types)
        if not types:
            return 0, set()
        stmt = stmt.where(Job.server_type.in_(types))
    stmt = stmt.order_by(Job.created_at, Job.job_id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    placed = 0
    full: set[str] = set()
    for job in session.scalars(stmt).all():
        if job.server_type in full:
            continue
        exclude = {
            h["instanceId"]
            for h in job.history
            if h.get("event") == "dep_failed" and h.get("instanceId")
        }
        if place_job(job, session=session, policy=policy, now=now, exclude=exclude, only=only):
            placed += 1
        else:
            full.add(job.server_type)
    return placed, full
