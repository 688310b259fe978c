"""The fleet table and the catalog: one grouped query per column family, no per-row queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from depman.core import dep_sources
from depman.core.failing import failing_instances
from depman.core.overview.rows import (
    INSTANCE_STATUSES,
    PINNING_JOB_STATES,
    CatalogRow,
    FleetOverview,
    InstanceRow,
    as_utc,
    int_or_none,
    liveness,
    parse_downloads,
    seconds_between,
)
from depman.core.source_bytes import fleet_source_bytes
from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    Profile,
    ProfileStaticDep,
    QueueItem,
    ServerType,
)


def dynamic_caps(session: Session) -> dict[str, int | None]:
    """Server type -> its profile's maxDynamicBytes."""
    rows = session.execute(
        select(ServerType.server_type, Profile.dynamic_policy).outerjoin(
            Profile, Profile.profile_id == ServerType.profile_id
        )
    ).all()
    return {st: int_or_none((policy or {}).get("maxDynamicBytes")) for st, policy in rows}


def item_counts(session: Session, instance_id: str | None = None) -> dict[str, dict[str, int]]:
    query = select(QueueItem.instance_id, QueueItem.state, func.count()).group_by(
        QueueItem.instance_id, QueueItem.state
    )
    if instance_id is not None:
        query = query.where(QueueItem.instance_id == instance_id)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for iid, state, n in session.execute(query).all():
        counts[iid][state] = n
    return counts


def inventory_counts(session: Session, instance_id: str | None = None) -> dict[str, dict[str, int]]:
    query = select(InstanceDep.instance_id, InstanceDep.kind, func.count()).group_by(
        InstanceDep.instance_id, InstanceDep.kind
    )
    if instance_id is not None:
        query = query.where(InstanceDep.instance_id == instance_id)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for iid, kind, n in session.execute(query).all():
        counts[iid][kind] = n
    return counts


def active_job_counts(session: Session) -> dict[str, int]:
    query = (
        select(Job.instance_id, func.count())
        .where(Job.state.in_(PINNING_JOB_STATES), Job.instance_id.is_not(None))
        .group_by(Job.instance_id)
    )
    return {iid: n for iid, n in session.execute(query).all() if iid is not None}


def instance_row(
    inst: Instance,
    *,
    now: datetime,
    live_ttl: float,
    caps: Mapping[str, int | None],
    items: Mapping[str, int],
    inventory: Mapping[str, int],
    active_jobs: int,
    downloads_failing: bool = False,
) -> InstanceRow:
    last = as_utc(inst.last_heartbeat_at)
    return InstanceRow(
        instance_id=inst.instance_id,
        server_type=inst.server_type,
        ip=inst.ip,
        agent_version=inst.agent_version,
        status=liveness(last, now, live_ttl, lost=inst.lost_at is not None),
        last_heartbeat_at=last,
        heartbeat_age=seconds_between(last, now),
        disk_total=inst.disk_total_bytes,
        disk_used=inst.disk_used_bytes,
        disk_free=inst.disk_free_bytes,
        dynamic_used=inst.dynamic_bytes_used,
        dynamic_cap=caps.get(inst.server_type),
        static_count=inventory.get("static", 0),
        dynamic_count=inventory.get("dynamic", 0),
        items_queued=items.get("queued", 0),
        items_running=items.get("running", 0),
        items_failed=items.get("failed", 0),
        agent_queue_depth=inst.queue_depth,
        downloads=parse_downloads(inst.active_downloads),
        active_jobs=active_jobs,
        failed_dep_ids=list(inst.failed_dep_ids or []),
        drained=bool(inst.drained),
        downloads_failing=downloads_failing,
    )


def job_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}


def fleet_overview(*, session: Session, now: datetime, live_ttl: float) -> FleetOverview:
    """Every instance with liveness, disk, cache, queue and downloads: by status, then by id."""
    caps = dynamic_caps(session)
    items = item_counts(session)
    inventory = inventory_counts(session)
    active = active_job_counts(session)
    failing = failing_instances(None, session=session, now=now)
    instances = session.scalars(select(Instance).order_by(Instance.instance_id)).all()
    rows = [
        instance_row(
            inst,
            now=now,
            live_ttl=live_ttl,
            caps=caps,
            items=items.get(inst.instance_id, {}),
            inventory=inventory.get(inst.instance_id, {}),
            active_jobs=active.get(inst.instance_id, 0),
            downloads_failing=inst.instance_id in failing,
        )
        for inst in instances
    ]
    order = {status: pos for pos, status in enumerate(INSTANCE_STATUSES)}
    rows.sort(key=lambda r: (order[r.status], r.instance_id))
    return FleetOverview(
        instances=rows,
        generated_at=now,
        live_ttl=live_ttl,
        jobs_by_state=job_counts(session),
        source_bytes=fleet_source_bytes(session=session),
    )


def _shown_path(dep: Dep) -> str:
    """`root:models/...`, with a trailing '/' for a folder model."""
    path = dep.dest_relative_path + ("/" if dep.files is not None else "")
    return f"{dep.root}:{path}" if dep.root else path


def catalog_overview(*, session: Session, now: datetime, live_ttl: float) -> list[CatalogRow]:
    """Every dep with how many live and known instances hold it and its queue items."""
    # One grouped query, not every inventory row: the fleet may hold tens of thousands.
    cutoff = now - timedelta(seconds=live_ttl)
    is_live = case((Instance.last_heartbeat_at >= cutoff, 1), else_=0)
    holders = {
        dep_id: (int(live or 0), int(total))
        for dep_id, live, total in session.execute(
            select(InstanceDep.dep_id, func.sum(is_live), func.count())
            .join(Instance, Instance.instance_id == InstanceDep.instance_id)
            .group_by(InstanceDep.dep_id)
        ).all()
    }
    items: dict[str, dict[str, int]] = defaultdict(dict)
    for dep_id, state, n in session.execute(
        select(QueueItem.dep_id, QueueItem.state, func.count()).group_by(
            QueueItem.dep_id, QueueItem.state
        )
    ).all():
        items[dep_id][state] = n
    profiles: dict[str, list[str]] = defaultdict(list)
    for dep_id, profile_id in session.execute(
        select(ProfileStaticDep.dep_id, ProfileStaticDep.profile_id).order_by(
            ProfileStaticDep.profile_id
        )
    ).all():
        profiles[dep_id].append(profile_id)
    rows = []
    for dep in session.scalars(select(Dep).order_by(Dep.kind.desc(), Dep.dep_id)).all():
        holders_live, holders_total = holders.get(dep.dep_id, (0, 0))
        counts = items.get(dep.dep_id, {})
        rows.append(
            CatalogRow(
                dep_id=dep.dep_id,
                kind=dep.kind,
                auth=dep.auth,
                # The hf:// / civitai:// source as written, or the URL's host.
                url_host=dep.source or urlsplit(dep.url).hostname or dep.url,
                dest_relative_path=_shown_path(dep),
                sha256=dep.sha256,
                size_bytes=dep.expected_size_bytes,
                holders_live=holders_live,
                holders_total=holders_total,
                items_queued=counts.get("queued", 0),
                items_running=counts.get("running", 0),
                items_failed=counts.get("failed", 0),
                profiles=profiles.get(dep.dep_id, []),
                sources=[
                    s.source or urlsplit(s.url).hostname or s.url
                    for s in dep_sources.stored(dep.sources)
                ],
            )
        )
    return rows
