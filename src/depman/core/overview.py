"""Read models of the dashboard: the fleet, one instance, the catalog, the jobs.

Pure queries over the store, no HTTP: each function takes a session and the
current time, and answers plain dataclasses that a template (or a test) reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from depman.errors import NotFound
from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    JobDep,
    Profile,
    ProfileStaticDep,
    QueueItem,
    ServerType,
)

# Job states whose deps are pinned on their instance (design.md, "Jobs").
PINNING_JOB_STATES = ("waiting_deps", "ready", "running")
JOB_STATES = ("pending", "waiting_deps", "ready", "running", "completed", "failed")
ITEM_STATES = ("queued", "running", "succeeded", "failed")
DEFAULT_JOBS_LIMIT = 200


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """`end - start` in seconds, or None when either is missing."""
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


@dataclass(frozen=True)
class Download:
    """One download in progress, as the instance's last heartbeat reported it."""

    dep_id: str
    bytes_done: int
    bytes_total: int | None
    bytes_per_second: float | None

    @property
    def fraction(self) -> float | None:
        """Share done in 0..1, or None when the total is unknown."""
        if not self.bytes_total:
            return None
        return max(0.0, min(1.0, self.bytes_done / self.bytes_total))

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate, or None."""
        if not self.bytes_total or not self.bytes_per_second:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_second)


@dataclass(frozen=True)
class InstanceRow:
    """One line of the fleet table."""

    instance_id: str
    server_type: str
    ip: str | None
    agent_version: str | None
    status: str  # "live", "stale" or "never" (no heartbeat yet)
    last_heartbeat_at: datetime | None
    heartbeat_age: float | None
    disk_total: int | None
    disk_used: int | None
    disk_free: int | None
    dynamic_used: int | None
    dynamic_cap: int | None
    static_count: int
    dynamic_count: int
    items_queued: int
    items_running: int
    items_failed: int
    agent_queue_depth: int | None
    downloads: list[Download]
    active_jobs: int
    failed_dep_ids: list[str]

    @property
    def live(self) -> bool:
        """Heartbeat within the TTL."""
        return self.status == "live"

    @property
    def disk_fraction(self) -> float | None:
        """Used share of the disk, or None without disk stats."""
        if not self.disk_total or self.disk_used is None:
            return None
        return max(0.0, min(1.0, self.disk_used / self.disk_total))

    @property
    def dynamic_fraction(self) -> float | None:
        """Dynamic cache use against its cap, or None without a cap."""
        if not self.dynamic_cap or self.dynamic_used is None:
            return None
        return max(0.0, min(1.0, self.dynamic_used / self.dynamic_cap))


@dataclass(frozen=True)
class FleetOverview:
    """The fleet page: every instance plus totals."""

    instances: list[InstanceRow]
    generated_at: datetime
    live_ttl: float
    jobs_by_state: dict[str, int]

    @property
    def live_count(self) -> int:
        """Instances with a fresh heartbeat."""
        return sum(1 for row in self.instances if row.live)

    @property
    def stale_count(self) -> int:
        """Instances that heartbeat once but not lately, or never."""
        return len(self.instances) - self.live_count

    @property
    def download_count(self) -> int:
        """Downloads in progress across the fleet."""
        return sum(len(row.downloads) for row in self.instances)

    @property
    def queued_count(self) -> int:
        """Queue items waiting across the fleet."""
        return sum(row.items_queued for row in self.instances)

    @property
    def failed_count(self) -> int:
        """Failed queue items across the fleet."""
        return sum(row.items_failed for row in self.instances)

    @property
    def bytes_per_second(self) -> float:
        """Aggregate download rate."""
        return sum(d.bytes_per_second or 0.0 for row in self.instances for d in row.downloads)


@dataclass(frozen=True)
class InventoryEntry:
    """A dep an instance holds."""

    dep_id: str
    kind: str
    since: datetime | None
    size_bytes: int | None
    dest_relative_path: str | None
    pinned: bool


@dataclass(frozen=True)
class PinnedDep:
    """A dep that jobs on the instance wait for or use."""

    dep_id: str
    job_ids: list[str]
    installed: bool


@dataclass(frozen=True)
class QueueEntry:
    """One queue item of an instance."""

    item_id: str
    dep_id: str
    op: str
    state: str
    priority: int
    attempts: int
    error: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    download: Download | None


@dataclass(frozen=True)
class WaitingDep:
    """A dep a job still waits for, with its queue item's state on the instance."""

    dep_id: str
    item_state: str | None
    fraction: float | None


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs table."""

    job_id: str
    state: str
    server_type: str
    instance_id: str | None
    dep_ids: list[str]
    waiting_on: list[WaitingDep]
    error: str | None
    placements: int
    created_at: datetime | None
    placed_at: datetime | None
    ready_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    now: datetime

    @property
    def age(self) -> float | None:
        """Seconds since submission."""
        return seconds_between(self.created_at, self.now)

    @property
    def deps_wait(self) -> float | None:
        """Placement to ready (or to now while still waiting)."""
        if self.placed_at is None:
            return None
        end = self.ready_at or (self.now if self.state == "waiting_deps" else self.finished_at)
        return seconds_between(self.placed_at, end)

    @property
    def run_time(self) -> float | None:
        """Start to finish (or to now while running)."""
        if self.started_at is None:
            return None
        return seconds_between(self.started_at, self.finished_at or self.now)


@dataclass(frozen=True)
class JobsOverview:
    """The jobs page."""

    jobs: list[JobRow]
    counts: dict[str, int]
    state_filter: str | None
    limit: int

    @property
    def total(self) -> int:
        """All jobs, whatever the filter."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class InstanceDetail:
    """The instance page."""

    row: InstanceRow
    profile_id: str | None
    dynamic_policy: dict[str, Any]
    registered_at: datetime | None
    created_at: datetime | None
    static: list[InventoryEntry]
    dynamic: list[InventoryEntry]
    pinned: list[PinnedDep]
    queue: list[QueueEntry]
    jobs: list[JobRow]
    generated_at: datetime


@dataclass(frozen=True)
class CatalogRow:
    """One dep of the catalog with where it is."""

    dep_id: str
    kind: str
    auth: str
    url_host: str
    dest_relative_path: str
    sha256: str | None
    size_bytes: int | None
    holders_live: int
    holders_total: int
    items_queued: int
    items_running: int
    items_failed: int
    profiles: list[str] = field(default_factory=list)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_downloads(raw: Iterable[Mapping[str, Any]] | None) -> list[Download]:
    """Heartbeat `activeDownloads` entries; malformed ones are skipped, not fatal."""
    out: list[Download] = []
    for entry in raw or []:
        if not isinstance(entry, Mapping) or not entry.get("depId"):
            continue
        rate = entry.get("bytesPerSecond")
        out.append(
            Download(
                dep_id=str(entry["depId"]),
                bytes_done=_int_or_none(entry.get("bytesDone")) or 0,
                bytes_total=_int_or_none(entry.get("bytesTotal")),
                bytes_per_second=float(rate) if isinstance(rate, int | float) else None,
            )
        )
    return out


def _status(last_heartbeat_at: datetime | None, now: datetime, live_ttl: float) -> str:
    age = seconds_between(last_heartbeat_at, now)
    if age is None:
        return "never"
    return "live" if age <= live_ttl else "stale"


def _dynamic_caps(session: Session) -> dict[str, int | None]:
    """Server type -> its profile's maxDynamicBytes."""
    rows = session.execute(
        select(ServerType.server_type, Profile.dynamic_policy).outerjoin(
            Profile, Profile.profile_id == ServerType.profile_id
        )
    ).all()
    return {st: _int_or_none((policy or {}).get("maxDynamicBytes")) for st, policy in rows}


def _item_counts(session: Session, instance_id: str | None = None) -> dict[str, dict[str, int]]:
    query = select(QueueItem.instance_id, QueueItem.state, func.count()).group_by(
        QueueItem.instance_id, QueueItem.state
    )
    if instance_id is not None:
        query = query.where(QueueItem.instance_id == instance_id)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for iid, state, n in session.execute(query).all():
        counts[iid][state] = n
    return counts


def _inventory_counts(
    session: Session, instance_id: str | None = None
) -> dict[str, dict[str, int]]:
    query = select(InstanceDep.instance_id, InstanceDep.kind, func.count()).group_by(
        InstanceDep.instance_id, InstanceDep.kind
    )
    if instance_id is not None:
        query = query.where(InstanceDep.instance_id == instance_id)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for iid, kind, n in session.execute(query).all():
        counts[iid][kind] = n
    return counts


def _active_job_counts(session: Session) -> dict[str, int]:
    query = (
        select(Job.instance_id, func.count())
        .where(Job.state.in_(PINNING_JOB_STATES), Job.instance_id.is_not(None))
        .group_by(Job.instance_id)
    )
    return {iid: n for iid, n in session.execute(query).all() if iid is not None}


def _instance_row(
    inst: Instance,
    *,
    now: datetime,
    live_ttl: float,
    caps: Mapping[str, int | None],
    items: Mapping[str, int],
    inventory: Mapping[str, int],
    active_jobs: int,
) -> InstanceRow:
    last = as_utc(inst.last_heartbeat_at)
    return InstanceRow(
        instance_id=inst.instance_id,
        server_type=inst.server_type,
        ip=inst.ip,
        agent_version=inst.agent_version,
        status=_status(last, now, live_ttl),
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
    )


def _job_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}


def fleet_overview(*, session: Session, now: datetime, live_ttl: float) -> FleetOverview:
    """Every instance with liveness, disk, cache, queue and downloads: live first, then by id."""
    caps = _dynamic_caps(session)
    items = _item_counts(session)
    inventory = _inventory_counts(session)
    active = _active_job_counts(session)
    instances = session.scalars(select(Instance).order_by(Instance.instance_id)).all()
    rows = [
        _instance_row(
            inst,
            now=now,
            live_ttl=live_ttl,
            caps=caps,
            items=items.get(inst.instance_id, {}),
            inventory=inventory.get(inst.instance_id, {}),
            active_jobs=active.get(inst.instance_id, 0),
        )
        for inst in instances
    ]
    order = {"live": 0, "stale": 1, "never": 2}
    rows.sort(key=lambda r: (order[r.status], r.instance_id))
    return FleetOverview(
        instances=rows, generated_at=now, live_ttl=live_ttl, jobs_by_state=_job_counts(session)
    )


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


def _job_rows(session: Session, jobs: list[Job], now: datetime) -> list[JobRow]:
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
        jobs=_job_rows(session, jobs, now),
        counts=_job_counts(session),
        state_filter=state or None,
        limit=limit,
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
    row = _instance_row(
        inst,
        now=now,
        live_ttl=live_ttl,
        caps={inst.server_type: _int_or_none(policy.get("maxDynamicBytes"))},
        items=_item_counts(session, instance_id).get(instance_id, {}),
        inventory=_inventory_counts(session, instance_id).get(instance_id, {}),
        active_jobs=_active_job_counts(session).get(instance_id, 0),
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
    state_order = {"running": 0, "queued": 1, "failed": 2, "succeeded": 3}
    queue = sorted(
        (
            QueueEntry(
                item_id=f"{item.dep_id}.{item.generation}",
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
        jobs=_job_rows(session, jobs, now),
        generated_at=now,
    )


def catalog_overview(*, session: Session, now: datetime, live_ttl: float) -> list[CatalogRow]:
    """Every dep with how many live and known instances hold it and its queue items."""
    live_ids = {
        iid
        for iid, last in session.execute(
            select(Instance.instance_id, Instance.last_heartbeat_at)
        ).all()
        if _status(last, now, live_ttl) == "live"
    }
    holders: dict[str, list[str]] = defaultdict(list)
    for iid, dep_id in session.execute(select(InstanceDep.instance_id, InstanceDep.dep_id)).all():
        holders[dep_id].append(iid)
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
        held_by = holders.get(dep.dep_id, [])
        counts = items.get(dep.dep_id, {})
        rows.append(
            CatalogRow(
                dep_id=dep.dep_id,
                kind=dep.kind,
                auth=dep.auth,
                url_host=urlsplit(dep.url).hostname or dep.url,
                dest_relative_path=dep.dest_relative_path,
                sha256=dep.sha256,
                size_bytes=dep.expected_size_bytes,
                holders_live=sum(1 for iid in held_by if iid in live_ids),
                holders_total=len(held_by),
                items_queued=counts.get("queued", 0),
                items_running=counts.get("running", 0),
                items_failed=counts.get("failed", 0),
                profiles=profiles.get(dep.dep_id, []),
            )
        )
    return rows
