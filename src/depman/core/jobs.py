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
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.pins import refresh_pins
from depman.core.policy import Policy
from depman.core.queue import enqueue
from depman.core.scheduler import place_job, place_pending_jobs, record
from depman.core.states import (
    ACTIVE_JOB_STATES,
    OPEN_ITEM_STATES,
    PRIORITY_JOB,
    TERMINAL_JOB_STATES,
    ItemState,
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


def _unproven_item() -> ColumnElement[bool]:
    """An item of (job's instance, dep) that keeps a held dep from counting toward readiness:
    an open download or touch, or a failed touch (the agent did not find the file)."""
    return exists().where(
        QueueItem.instance_id == Job.instance_id,
        QueueItem.dep_id == JobDep.dep_id,
        or_(
            QueueItem.state.in_(OPEN_ITEM_STATES),
            and_(QueueItem.op == Op.TOUCH.value, QueueItem.state == ItemState.FAILED.value),
        ),
    )


def deps_and_missing(job: Job, *, session: Session) -> tuple[list[str], list[str]]:
    """One job's deps in order, and those of them not yet proven on its instance (one query).

    A waiting job lacks a dep its instance does not hold, or holds with a download
    or `touch` still open (a touch proves presence; the inventory alone does not).
    A ready or running job lacks what its instance no longer holds; a pending job
    lacks them all, a finished one nothing (`missing_of_jobs` for many jobs).
    """
    held: ColumnElement[bool]
    if job.state == JobState.PENDING.value:
        held = literal(False)
    elif job.instance_id and job.state not in TERMINAL_JOB_STATES:
        held = exists().where(
            InstanceDep.instance_id == job.instance_id, InstanceDep.dep_id == JobDep.dep_id
        )
        if job.state == JobState.WAITING_DEPS.value:
            held = and_(held, not_(_unproven_item()))
    else:
        held = literal(True)
    rows = session.connection().execute(
        select(JobDep.dep_id, held)
        .join(Job, Job.job_id == JobDep.job_id)
        .where(JobDep.job_id == job.job_id)
        .order_by(JobDep.position)
    ).all()
    return [dep_id for dep_id, _ in rows], [dep_id for dep_id, have in rows if not have]


def _blocking_items(
    instance_ids: Collection[str], dep_ids: Collection[str], *, session: Session
) -> dict[str, set[str]]:
    """instance id → deps whose item there keeps them from counting (see `_unproven_item`)."""
    result: dict[str, set[str]] = {}
    if not instance_ids or not dep_ids:
        return result
    for instance_id, dep_id in session.execute(
        select(QueueItem.instance_id, QueueItem.dep_id).where(
            QueueItem.instance_id.in_(list(instance_ids)),
            QueueItem.dep_id.in_(list(dep_ids)),
            or_(
                QueueItem.state.in_(OPEN_ITEM_STATES),
                and_(QueueItem.op == Op.TOUCH.value, QueueItem.state == ItemState.FAILED.value),
            ),
        )
    ):
        result.setdefault(instance_id, set()).add(dep_id)
    return result


def missing_of_jobs(
    jobs: Collection[Job], deps: dict[str, list[str]], *, session: Session
) -> dict[str, list[str]]:
    """For each placed, unfinished job, its deps not yet proven on its instance (two queries)."""
    placed = [j for j in jobs if j.instance_id and j.state not in TERMINAL_JOB_STATES]
    held: dict[str, set[str]] = {}
    instance_ids = {j.instance_id for j in placed if j.instance_id}
    all_deps = {d for j in placed for d in deps.get(j.job_id, [])}
    if placed and all_deps:
        for instance_id, dep_id in session.execute(
            select(InstanceDep.instance_id, InstanceDep.dep_id).where(
                InstanceDep.instance_id.in_(instance_ids), InstanceDep.dep_id.in_(all_deps)
            )
        ):
            held.setdefault(instance_id, set()).add(dep_id)
    waiting = {j.instance_id for j in placed if j.state == JobState.WAITING_DEPS.value}
    blocked = _blocking_items({i for i in waiting if i}, all_deps, session=session)
    result: dict[str, list[str]] = {}
    for job in jobs:
        job_deps = deps.get(job.job_id, [])
        if job.state == JobState.PENDING.value:
            result[job.job_id] = list(job_deps)
        elif job in placed:
            have = held.get(job.instance_id or "", set())
            if job.state == JobState.WAITING_DEPS.value:
                have = have - blocked.get(job.instance_id or "", set())
            result[job.job_id] = [d for d in job_deps if d not in have]
        else:
            result[job.job_id] = []
    return result


def _release(job: Job, *, session: Session, policy: Policy, now: datetime) -> None:
    """After a job leaves the active states: refresh pins, give its slot to a pending job."""
    refresh_pins(job.instance_id, session=session)
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


def _waiting_for(instance_id: str, dep_id: str) -> Select[Any]:
    return (
        select(Job)
        .join(JobDep, JobDep.job_id == Job.job_id)
        .where(
            Job.instance_id == instance_id,
            Job.state == JobState.WAITING_DEPS.value,
            JobDep.dep_id == dep_id,
        )
        .order_by(Job.job_id)
    )


def jobs_waiting_for(instance_id: str, dep_id: str, *, session: Session) -> list[str]:
    """The jobs placed on the instance that wait for the dep there: a failed (or
    cancelled) download of it moves them elsewhere or fails them."""
    return [job.job_id for job in session.scalars(_waiting_for(instance_id, dep_id))]


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
    jobs = session.scalars(_waiting_for(instance_id, dep_id).with_for_update()).all()
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


def _refresh_statements() -> tuple[Any, Any, Any]:
    # Built once: heartbeats and status reports only bind parameters.
    instance: Any = bindparam("p_instance_id")
    waiting = (
        select(Job)
        .where(Job.instance_id == instance, Job.state == JobState.WAITING_DEPS.value)
        .with_for_update()
    )
    needing = waiting.where(
        exists().where(JobDep.job_id == Job.job_id, JobDep.dep_id == bindparam("p_dep_id"))
    )
    # Each dep of the jobs, in order, with whether the instance lists it and its item
    # there (op and state; None when it has none): one statement for all the jobs.
    standing = (
        select(
            JobDep.job_id,
            JobDep.dep_id,
            InstanceDep.dep_id.is_not(None),
            QueueItem.op,
            QueueItem.state,
        )
        .select_from(JobDep)
        .outerjoin(
            InstanceDep,
            and_(InstanceDep.instance_id == instance, InstanceDep.dep_id == JobDep.dep_id),
        )
        .outerjoin(
            QueueItem, and_(QueueItem.instance_id == instance, QueueItem.dep_id == JobDep.dep_id)
        )
        .where(JobDep.job_id.in_(bindparam("p_job_ids", expanding=True)))
        .order_by(JobDep.job_id, JobDep.position)
    )
    return waiting, needing, standing


_WAITING_JOBS, _WAITING_JOBS_NEEDING, _DEP_STANDING = _refresh_statements()


def refresh_instance_jobs(
    instance_id: str,
    held: set[str] | None,
    *,
    session: Session,
    now: datetime,
    dep_id: str | None = None,
) -> list[Job]:
    """Waiting jobs of an instance whose deps are all proven there become ready.

    A dep is proven when the instance holds it (`held`: the inventory, None to read
    the rows) and no item of it there is open or a failed `touch`: a job whose dep
    was queued as a touch waits for that touch to succeed. A dep the heartbeat
    (`held` given) does not list and no download is open for, or whose touch failed
    (the file is gone), is queued for download again. `dep_id`: only the jobs that
    need it (a report about one dep). Answers the jobs that became ready.
    """
    if dep_id is None:
        jobs = session.scalars(_WAITING_JOBS, {"p_instance_id": instance_id}).all()
    else:
        params = {"p_instance_id": instance_id, "p_dep_id": dep_id}
        jobs = session.scalars(_WAITING_JOBS_NEEDING, params).all()
    if not jobs:
        return []
    deps: dict[str, list[str]] = {job.job_id: [] for job in jobs}
    on_disk: set[str] = set()
    items: dict[str, tuple[str, str]] = {}
    rows = session.connection().execute(
        _DEP_STANDING, {"p_instance_id": instance_id, "p_job_ids": list(deps)}
    )
    for job_id, dep, listed, op, state in rows:
        deps[job_id].append(dep)
        if listed:
            on_disk.add(dep)
        if state is not None:
            items[dep] = (op, state)
    from_inventory = held is not None
    if held is None:
        held = on_disk
    ready: list[Job] = []
    for job in jobs:
        unproven = False
        for dep in deps[job.job_id]:
            op, state = items.get(dep, ("", ""))
            is_open = state in OPEN_ITEM_STATES
            touch_failed = op == Op.TOUCH.value and state == ItemState.FAILED.value
            if dep in held and not is_open and not touch_failed:
                continue
            unproven = True
            # Gone: a touch that failed, or a heartbeat that does not list it (a report
            # about a download leaves the listing to the next heartbeat).
            gone = touch_failed or (from_inventory and dep not in held)
            if gone and not (is_open and op == Op.DOWNLOAD.value):
                enqueue(
                    instance_id, dep, Op.DOWNLOAD, priority=PRIORITY_JOB, session=session, now=now
                )
                items[dep] = (Op.DOWNLOAD.value, ItemState.QUEUED.value)
        if not unproven:
            job.state = JobState.READY.value
            job.ready_at = now
            job.updated_at = now
            record(job, "ready", now, instance_id)
            ready.append(job)
    return ready


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
