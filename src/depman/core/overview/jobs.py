"""The jobs table: state, instance, what each waiting job still lacks, timing."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.overview.fleet import job_counts
from depman.core.overview.rows import (
    DEFAULT_JOBS_LIMIT,
    Download,
    JobRow,
    JobsOverview,
    WaitingDep,
    as_utc,
    parse_downloads,
)
from depman.store.models import Instance, InstanceDep, Job, JobDep, QueueItem


def _job_deps(session: Session, job_ids: list[str]) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = defaultdict(list)
    if not job_ids:
        return deps
    rows = session.execute(
        select(JobDep.job_id, JobDep.dep_id)
        .where(JobDep.job_id.in_(job_ids))
        .order_by(JobDep.job_id, JobDep.position, JobDep.dep_id)
    ).all()
    for job_id, dep_id in rows:
        deps[job_id].append(dep_id)
    return deps


def job_rows(session: Session, jobs: list[Job], now: datetime) -> list[JobRow]:
    """Jobs with their deps and, for those waiting, what they still lack."""
    deps = _job_deps(session, [j.job_id for j in jobs])
    waiting = [j for j in jobs if j.state == "waiting_deps" and j.instance_id]
    instance_ids = {j.instance_id for j in waiting if j.instance_id}
    held: set[tuple[str, str]] = set()
    items: dict[tuple[str, str], QueueItem] = {}
    downloads: dict[tuple[str, str], Download] = {}
    if instance_ids:
        held = {
            (iid, dep)
            for iid, dep in session.execute(
                select(InstanceDep.instance_id, InstanceDep.dep_id).where(
                    InstanceDep.instance_id.in_(instance_ids)
                )
            ).all()
        }
        for queued in session.scalars(
            select(QueueItem).where(QueueItem.instance_id.in_(instance_ids))
        ).all():
            items[(queued.instance_id, queued.dep_id)] = queued
        for inst in session.scalars(
            select(Instance).where(Instance.instance_id.in_(instance_ids))
        ).all():
            for d in parse_downloads(inst.active_downloads):
                downloads[(inst.instance_id, d.dep_id)] = d
    rows = []
    for job in jobs:
        waiting_on: list[WaitingDep] = []
        if job.state == "waiting_deps" and job.instance_id:
            for dep_id in deps.get(job.job_id, []):
                key = (job.instance_id, dep_id)
                if key in held:
                    continue
                item = items.get(key)
                progress = downloads.get(key)
                waiting_on.append(
                    WaitingDep(
                        dep_id=dep_id,
                        item_state=item.state if item else None,
                        fraction=progress.fraction if progress else None,
                    )
                )
        rows.append(
            JobRow(
                job_id=job.job_id,
                state=job.state,
                server_type=job.server_type,
                instance_id=job.instance_id,
                dep_ids=deps.get(job.job_id, []),
                waiting_on=waiting_on,
                error=job.error,
                placements=job.placements,
                created_at=as_utc(job.created_at),
                placed_at=as_utc(job.placed_at),
                ready_at=as_utc(job.ready_at),
                started_at=as_utc(job.started_at),
                finished_at=as_utc(job.finished_at),
                now=now,
            )
        )
    return rows


def jobs_overview(
    *, session: Session, now: datetime, state: str | None = None, limit: int = DEFAULT_JOBS_LIMIT
) -> JobsOverview:
    """The newest jobs (optionally of one state) with what they wait for, plus counts by state."""
    query = select(Job).order_by(Job.created_at.desc(), Job.job_id).limit(limit)
    if state:
        query = query.where(Job.state == state)
    jobs = list(session.scalars(query).all())
    return JobsOverview(
        jobs=job_rows(session, jobs, now),
        counts=job_counts(session),
        state_filter=state or None,
        limit=limit,
    )
