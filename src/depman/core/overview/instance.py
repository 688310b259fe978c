"""One instance: inventory, pins, queue items with their errors, recent jobs."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.failing import failing_instances
from depman.core.overview.fleet import (
    active_job_counts,
    instance_row,
    inventory_counts,
    item_counts,
)
from depman.core.overview.jobs import job_rows
from depman.core.overview.rows import (
    PINNING_JOB_STATES,
    InstanceDetail,
    InventoryEntry,
    PinnedDep,
    QueueEntry,
    ReceiptEntry,
    as_utc,
    int_or_none,
)
from depman.core.queue import format_item_id
from depman.core.receipts import receipts_of
from depman.core.upstream import waiting_for_upstream
from depman.errors import NotFound
from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    JobDep,
    Profile,
    QueueItem,
    ServerType,
)


def _pinned(session: Session, instance_id: str) -> dict[str, list[str]]:
    """Dep id -> ids of the jobs on the instance that pin it."""
    rows = session.execute(
        select(JobDep.dep_id, Job.job_id)
        .join(Job, Job.job_id == JobDep.job_id)
        .where(Job.instance_id == instance_id, Job.state.in_(PINNING_JOB_STATES))
        .order_by(JobDep.dep_id, Job.job_id)
    ).all()
    pins: dict[str, list[str]] = defaultdict(list)
    for dep_id, job_id in rows:
        pins[dep_id].append(job_id)
    return pins


def instance_detail(
    instance_id: str, *, session: Session, now: datetime, live_ttl: float, jobs_limit: int = 50
) -> InstanceDetail:
    """One instance: inventory, pins, queue items with errors, its recent jobs."""
    inst = session.get(Instance, instance_id)
    if inst is None:
        raise NotFound(f"Instance {instance_id!r} not found")
    server_type = session.get(ServerType, inst.server_type)
    profile = (
        session.get(Profile, server_type.profile_id)
        if server_type is not None and server_type.profile_id
        else None
    )
    policy = dict(profile.dynamic_policy or {}) if profile else {}
    row = instance_row(
        inst,
        now=now,
        live_ttl=live_ttl,
        caps={inst.server_type: int_or_none(policy.get("maxDynamicBytes"))},
        items=item_counts(session, instance_id).get(instance_id, {}),
        inventory=inventory_counts(session, instance_id).get(instance_id, {}),
        active_jobs=active_job_counts(session).get(instance_id, 0),
        downloads_failing=bool(failing_instances([instance_id], session=session, now=now)),
    )
    pins = _pinned(session, instance_id)
    held = session.execute(
        select(InstanceDep, Dep.expected_size_bytes, Dep.dest_relative_path)
        .outerjoin(Dep, Dep.dep_id == InstanceDep.dep_id)
        .where(InstanceDep.instance_id == instance_id)
        .order_by(InstanceDep.kind, InstanceDep.dep_id)
    ).all()
    inventory = [
        InventoryEntry(
            dep_id=held_dep.dep_id,
            kind=held_dep.kind,
            since=as_utc(held_dep.since),
            size_bytes=size,
            dest_relative_path=dest,
            pinned=held_dep.dep_id in pins,
        )
        for held_dep, size, dest in held
    ]
    held_ids = {entry.dep_id for entry in inventory}
    downloads = {d.dep_id: d for d in row.downloads}
    items = session.scalars(
        select(QueueItem)
        .where(QueueItem.instance_id == instance_id)
        .order_by(QueueItem.enqueued_at.desc(), QueueItem.dep_id)
    ).all()
    state_order = {"running": 0, "queued": 1, "failed": 2, "cancelled": 3, "succeeded": 4}
    queue = sorted(
        (
            QueueEntry(
                item_id=format_item_id(item.dep_id, item.generation),
                dep_id=item.dep_id,
                op=item.op,
                state=item.state,
                priority=item.priority,
                attempts=item.attempts,
                error=item.error,
                enqueued_at=as_utc(item.enqueued_at),
                started_at=as_utc(item.started_at),
                finished_at=as_utc(item.finished_at),
                download=downloads.get(item.dep_id) if item.state == "running" else None,
                next_attempt_at=as_utc(item.next_attempt_at),
                cancel_reason=item.cancel_reason,
                waiting_for_upstream=waiting_for_upstream(item),
            )
            for item in items
        ),
        key=lambda q: state_order.get(q.state, 9),
    )
    jobs = list(
        session.scalars(
            select(Job)
            .where(Job.instance_id == instance_id)
            .order_by(Job.created_at.desc(), Job.job_id)
            .limit(jobs_limit)
        ).all()
    )
    receipts = [
        ReceiptEntry(
            dep_id=r.dep_id,
            algorithm=r.algorithm,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            verified_at=as_utc(r.verified_at),
            dest_relative_path=r.dest_relative_path,
            agent_version=r.agent_version,
            matches_catalog=r.matches_catalog,
            received_at=as_utc(r.received_at),
        )
        for r in receipts_of(instance_id, session=session)
    ]
    return InstanceDetail(
        row=row,
        profile_id=profile.profile_id if profile else None,
        dynamic_policy=policy,
        registered_at=as_utc(inst.registered_at),
        created_at=as_utc(inst.created_at),
        static=[e for e in inventory if e.kind == "static"],
        dynamic=[e for e in inventory if e.kind != "static"],
        pinned=[
            PinnedDep(dep_id=dep_id, job_ids=job_ids, installed=dep_id in held_ids)
            for dep_id, job_ids in pins.items()
        ],
        queue=queue,
        jobs=job_rows(session, jobs, now),
        generated_at=now,
        receipts=receipts,
        lost_at=as_utc(inst.lost_at),
        drained=bool(inst.drained),
        provider=inst.provider,
        provider_metadata=dict(inst.provider_metadata or {}),
        disk_stats_path=inst.disk_stats_path,
        disk_diagnostics=dict(inst.disk_diagnostics or {}),
    )
