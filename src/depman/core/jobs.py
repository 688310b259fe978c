"""The job state machine: start, complete, dep failures (re-place or fail), readiness, timeouts.

Failure policy (docs/server.md): when a dep fails on the reserved instance, the job
is placed again on another live instance of its type (never one where a dep of
this job already failed), up to `job_max_placements` placements; when none is
free or the budget is spent it fails with the agent's error. Every move is in
`history`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, func, literal, select
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.pins import refresh_pins
from depman.core.policy import Policy
from depman.core.queue import enqueue
from depman.core.scheduler import place_job, place_pending_jobs, record
from depman.core.signals import mark_job
from depman.core.states import (
    ACTIVE_JOB_STATES,
    OPEN_ITEM_STATES,
    PRIORITY_JOB,
    TERMINAL_JOB_STATES,
    JobState,
    Op,
)
from depman.errors import InvalidTransition, NotFound
from depman.store.models import InstanceDep, Job, JobDep, QueueItem


def get_job(job_id: str, *, session: Session, lock: bool = False) -> Job:
    """One job, or NotFound."""
    stmt = select(Job).where(Job.job_id == job_id)
    if lock:
        stmt = stmt.with_for_update()
    job = session.scalar(stmt)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job


def list_jobs(
    *, session: Session, state: str | None = None, instance_id: str | None = None, limit: int = 500
) -> list[Job]:
    """Jobs, newest first, optionally filtered by state and instance."""
    stmt = select(Job)
    if state:
        stmt = stmt.where(Job.state == state)
    if instance_id:
        stmt = stmt.where(Job.instance_id == instance_id)
    return list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.job_id).limit(limit)))


def deps_of_jobs(job_ids: Collection[str], *, session: Session) -> dict[str, list[str]]:
    """Each job's deps in order (one query)."""
    result: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for job_id, dep_id in session.execute(
            select(JobDep.job_id, JobDep.dep_id)
            .where(JobDep.job_id.in_(list(job_ids)))
            .order_by(JobDep.job_id, JobDep.position)
        ):
            result[job_id].append(dep_id)
    return result


def deps_and_missing(job: Job, *, session: Session) -> tuple[list[str], list[str]]:
    """One job's deps in order, and those of them its instance lacks (one query).

    `missing_of_jobs` for a single job: a pending job lacks them all, a finished
    one nothing.
    """
    held: ColumnElement[bool]
    if job.state == JobState.PENDING.value:
        held = literal(False)
    elif job.instance_id and job.state not in TERMINAL_JOB_STATES:
        held = exists().where(
            InstanceDep.instance_id == job.instance_id, InstanceDep.dep_id == JobDep.dep_id
        )
    else:
        held = literal(True)
    rows = session.connection().execute(
        select(JobDep.dep_id, held).where(JobDep.job_id == job.job_id).order_by(JobDep.position)
    ).all()
    return [dep_id for dep_id, _ in rows], [dep_id for dep_id, have in rows if not have]


def missing_of_jobs(
    jobs: Collection[Job], deps: dict[str, list[str]], *, session: Session
) -> dict[str, list[str]]:
    """For each placed, unfinished job, its deps its instance does not hold (one query)."""
    placed = [j for j in jobs if j.instance_id and j.state not in TERMINAL_JOB_STATES]
    held: dict[str, set[str]] = {}
    instance_ids = {j.instance_id for j in placed}
    all_deps = {d for j in placed for d in deps.get(j.job_id, [])}
    if placed and all_deps:
        for instance_id, dep_id in session.execute(
            select(InstanceDep.instance_id, InstanceDep.dep_id).where(
                InstanceDep.instance_id.in_(instance_ids), InstanceDep.dep_id.in_(all_deps)
            )
        ):
            held.setdefault(instance_id, set()).add(dep_id)
    result: dict[str, list[str]] = {}
    for job in jobs:
        job_deps = deps.get(job.job_id, [])
        if job.state == JobState.PENDING.value:
            result[job.job_id] = list(job_deps)
        elif job in placed:
            have = held.get(job.instance_id or "", set())
            result[job.job_id] = [d for d in job_deps if d not in have]
        else:
            result[job.job_id] = []
    return result


def _release(job: Job, *, session: Session, policy: Policy, now: datetime) -> None:
    """After a job leaves the active states: refresh pins, give its slot to a pending job."""
    refresh_pins(job.instance_id, session=session)
    mark_job(session, job.job_id)
    if job.instance_id:
        place_pending_jobs(session=session, policy=policy, server_types=[job.server_type], now=now)


def fail_job(job: Job, error: str, *, session: Session, policy: Policy, now: datetime) -> None:
    """Move a job to failed with `error` and release its reservation."""
    was_active = job.state in ACTIVE_JOB_STATES
    job.state = JobState.FAILED.value
    job.error = error
    job.finished_at = now
    job.updated_at = now
    record(job, "failed", now, job.instance_id, reason=error)
    if was_active:
        _release(job, session=session, policy=policy, now=now)
    else:
        mark_job(session, job.job_id)


def start_job(job_id: str, *, session: Session, now: datetime | None = None) -> Job:
    """ready → running (idempotent when already running)."""
    now = now or utcnow()
    job = get_job(job_id, session=session, lock=True)
    if job.state == JobState.RUNNING.value:
        return job
    if job.state != JobState.READY.value:
        raise InvalidTransition(f"job {job_id!r} is {job.state}, not ready")
    job.state = JobState.RUNNING.value
    job.started_at = now
    job.updated_at = now
    record(job, "started", now, job.instance_id)
    mark_job(session, job.job_id)
    return job


def complete_job(
    job_id: str,
    ok: bool,
    error: str | None = None,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> Job:
    """Finish a job and release its reservation.

    `ok=true` needs a ready or running job; `ok=false` also cancels a pending or
    waiting one. Repeating the same outcome is a no-op.
    """
    now = now or utcnow()
    job = get_job(job_id, session=session, lock=True)
    target = JobState.COMPLETED.value if ok else JobState.FAILED.value
    if job.state in TERMINAL_JOB_STATES:
        if job.state == target:
            return job
        raise InvalidTransition(f"job {job_id!r} already {job.state}")
    if ok and job.state not in (JobState.READY.value, JobState.RUNNING.value):
        raise InvalidTransition(
            f"job {job_id!r} is {job.state}; only a ready or running job completes"
        )
    if not ok:
        fail_job(job, error or "reported failed", session=session, policy=policy, now=now)
        return job
    job.state = target
    job.finished_at = now
    job.updated_at = now
    record(job, "completed", now, job.instance_id)
    _release(job, session=session, policy=policy, now=now)
    return job


def on_dep_failed(
    instance_id: str,
    dep_id: str,
    error: str,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> list[Job]:
    """A download failed on an instance: re-place or fail the jobs waiting for it there."""
    now = now or utcnow()
    jobs = session.scalars(
        select(Job)
        .join(JobDep, JobDep.job_id == Job.job_id)
        .where(
            Job.instance_id == instance_id,
            Job.state == JobState.WAITING_DEPS.value,
            JobDep.dep_id == dep_id,
        )
        .with_for_update()
    ).all()
    message = f"dependency {dep_id} failed on instance {instance_id}: {error}"
    for job in jobs:
        record(job, "dep_failed", now, instance_id, depId=dep_id, reason=error)
        tried = {h["instanceId"] for h in job.history if h.get("event") == "dep_failed"}
        if job.placements < policy.job_max_placements:
            job.state = JobState.PENDING.value
            job.instance_id = None
            refresh_pins(instance_id, session=session)
            if place_job(job, session=session, policy=policy, now=now, exclude=tried):
                continue
            job.state = JobState.WAITING_DEPS.value
            job.instance_id = instance_id
        fail_job(job, message, session=session, policy=policy, now=now)
    return list(jobs)


def refresh_instance_jobs(
    instance_id: str, held: set[str], *, session: Session, now: datetime
) -> None:
    """After an inventory change: waiting jobs whose deps are all held become ready.

    A waiting job's dep that is neither held nor being downloaded (a touched file
    that turned out gone) is queued for download again.
    """
    jobs = session.scalars(
        select(Job).where(Job.instance_id == instance_id, Job.state == JobState.WAITING_DEPS.value)
    ).all()
    if not jobs:
        return
    deps = deps_of_jobs([j.job_id for j in jobs], session=session)
    open_downloads = set(
        session.scalars(
            select(QueueItem.dep_id).where(
                QueueItem.instance_id == instance_id,
                QueueItem.state.in_(OPEN_ITEM_STATES),
                QueueItem.op == Op.DOWNLOAD.value,
            )
        )
    )
    for job in jobs:
        missing = [d for d in deps[job.job_id] if d not in held]
        if not missing:
            job.state = JobState.READY.value
            job.ready_at = now
            job.updated_at = now
            record(job, "ready", now, instance_id)
            mark_job(session, job.job_id)
            continue
        for dep_id in missing:
            if dep_id not in open_downloads:
                enqueue(
                    instance_id,
                    dep_id,
                    Op.DOWNLOAD,
                    priority=PRIORITY_JOB,
                    session=session,
                    now=now,
                )
                open_downloads.add(dep_id)


def expire_jobs(*, session: Session, policy: Policy, now: datetime | None = None) -> int:
    """Fail jobs pending or waiting for deps longer than their timeouts."""
    now = now or utcnow()
    pending_cutoff = now - timedelta(seconds=policy.job_pending_timeout_seconds)
    deps_cutoff = now - timedelta(seconds=policy.job_deps_timeout_seconds)
    expired = session.scalars(
        select(Job)
        .where(
            ((Job.state == JobState.PENDING.value) & (Job.created_at < pending_cutoff))
            | ((Job.state == JobState.WAITING_DEPS.value) & (Job.placed_at < deps_cutoff))
        )
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        if job.state == JobState.PENDING.value:
            reason = f"no instance became free within {policy.job_pending_timeout_seconds:g}s"
        else:
            reason = f"dependencies not installed within {policy.job_deps_timeout_seconds:g}s"
        fail_job(job, reason, session=session, policy=policy, now=now)
    return len(expired)


def pending_server_types(*, session: Session) -> set[str]:
    """Server types that have pending jobs."""
    return set(
        session.scalars(
            select(Job.server_type).where(Job.state == JobState.PENDING.value).distinct()
        )
    )


def count_by_state(*, session: Session) -> dict[str, int]:
    """Jobs per state (for metrics)."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    return {state: count for state, count in rows}
