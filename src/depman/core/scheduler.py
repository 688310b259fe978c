"""Placing jobs: rank live instances with a free slot, lock the chosen row, queue what it lacks.

A pending job may instead wait, within `placement_max_wait_seconds`, for a busy
instance that holds much more of its bytes (`depman.core.placement.choose_placement`);
it is placed when that instance frees a slot, or on the best free one once its wait
allowance is spent (the maintenance sweep re-tries pending jobs).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from depman.core.candidates import busy_holders, find_candidates
from depman.core.catalog import validate_id
from depman.core.clock import isoformat, utcnow
from depman.core.pins import add_pins
from depman.core.placement import (
    Candidate,
    Decision,
    choose_placement,
    expected_wait_seconds,
    missing_deps,
    typical_job_seconds,
)
from depman.core.policy import Policy
from depman.core.queue import enqueue
from depman.core.states import ACTIVE_JOB_STATES, PRIORITY_JOB, JobState, Op
from depman.errors import Conflict, ValidationFailed
from depman.store.models import Dep, Instance, Job, JobDep, ServerType

# Completed jobs of a server type whose median duration estimates how long a busy
# instance stays busy.
RECENT_JOBS = 20


class Outcome(StrEnum):
    """What one placement attempt did with a pending job."""

    PLACED = "placed"
    WAITING = "waiting"  # for a busy instance that holds more of its bytes
    NO_SLOT = "no_slot"


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


# Built once: a submit only binds them.
_PINS = select(Instance.pinned_dep_ids).where(Instance.instance_id == bindparam("p_instance_id"))
_LOCK_SKIPPING = _PINS.with_for_update(skip_locked=True)
_LOCK_WAITING = _PINS.with_for_update()
_ACTIVE_THERE = (
    select(func.count())
    .select_from(Job)
    .where(Job.instance_id == bindparam("p_instance_id"), Job.state.in_(ACTIVE_JOB_STATES))
)
# The type's job slots with the job's catalog entries: one row per dep found, or one
# row of NULL entries when none is; no row when the type does not exist.
_SPEC = (
    select(ServerType.max_active_jobs, Dep.dep_id, Dep.expected_size_bytes, Dep.kind)
    .select_from(ServerType)
    .outerjoin(Dep, Dep.dep_id.in_(bindparam("p_dep_ids", expanding=True)))
    .where(ServerType.server_type == bindparam("p_server_type"))
)
_RECENT_RUNS = (
    select(Job.placed_at, Job.finished_at)
    .where(Job.state == JobState.COMPLETED.value, Job.server_type == bindparam("p_server_type"))
    .order_by(Job.created_at.desc())
    .limit(RECENT_JOBS)
)


def _claim(
    instance_id: str, slots: int, *, session: Session, skip_locked: bool
) -> list[str] | None:
    """Lock the instance row, then re-count its active jobs with what is now committed.

    Answers the row's pins (read under the lock) when a slot is free, else None.
    """
    conn = session.connection()
    lock = _LOCK_SKIPPING if skip_locked else _LOCK_WAITING
    locked = conn.execute(lock, {"p_instance_id": instance_id}).first()
    if locked is None:
        return None
    # A new statement, so a new snapshot: it sees what committed while we waited.
    active = conn.execute(_ACTIVE_THERE, {"p_instance_id": instance_id}).scalar()
    return list(locked[0] or []) if (active or 0) < slots else None


@dataclass(frozen=True)
class JobNeeds:
    """What placement needs to know of a job: its deps in order, their sizes and kinds."""

    dep_ids: list[str]
    deps: dict[str, tuple[int | None, str]]  # dep id → (expected size, kind)
    slots: int  # jobs per instance of its server type

    @property
    def sizes(self) -> dict[str, int | None]:
        """dep id → expected size (None: unknown), in the job's order."""
        return {d: self.deps.get(d, (None, ""))[0] for d in self.dep_ids}

    def is_dynamic(self, dep_id: str) -> bool:
        """Whether the catalog says the dep is dynamic (its use refreshes the agent's LRU)."""
        return self.deps.get(dep_id, (None, ""))[1] == "dynamic"


def job_spec(
    server_type: str, dep_ids: list[str], *, session: Session
) -> tuple[int | None, dict[str, tuple[int | None, str]]]:
    """The type's jobs per instance (None: no such type), and dep id → (expected size,
    kind) for those of `dep_ids` in the catalog (one query)."""
    rows = session.connection().execute(
        _SPEC, {"p_server_type": server_type, "p_dep_ids": dep_ids}
    ).all()
    if not rows:
        return None, {}
    deps = {dep_id: (size, kind) for _slots, dep_id, size, kind in rows if dep_id is not None}
    return int(rows[0][0]), deps


def job_needs(job: Job, *, session: Session) -> JobNeeds:
    """The needs of a stored job (two small queries)."""
    dep_ids = job_dep_ids(job.job_id, session=session)
    slots, deps = job_spec(job.server_type, dep_ids, session=session)
    return JobNeeds(dep_ids, deps, 1 if slots is None else slots)


def _typical_job_seconds(server_type: str, *, session: Session, policy: Policy) -> float:
    """Median placed-to-finished time of the type's recent completed jobs (else the default)."""
    rows = session.connection().execute(_RECENT_RUNS, {"p_server_type": server_type}).all()
    durations = [(done - placed).total_seconds() for placed, done in rows if placed and done]
    return typical_job_seconds(durations, policy.placement_default_job_seconds)


def _waiting_since(job: Job) -> datetime | None:
    """When the job first decided to wait for a busy instance, if it did."""
    first = next((h for h in job.history if h.get("event") == "waiting"), None)
    return datetime.fromisoformat(first["at"]) if first else None


def _wait_allowance(job: Job, policy: Policy, now: datetime) -> float:
    """Seconds the job may still wait for a busy instance (its max wait less waits so far)."""
    since = _waiting_since(job)
    waited = (now - since).total_seconds() if since else 0.0
    return policy.placement_max_wait_seconds - waited


def _record_wait(
    job: Job, decision: Decision, best_free: Candidate, *, session: Session, now: datetime
) -> None:
    """Note in the history, once per instance waited for, whom the job waits for and why."""
    assert decision.wait_for is not None
    target = decision.wait_for.instance_id
    last = next((h for h in reversed(job.history) if h.get("event") == "waiting"), None)
    if last is not None and last.get("instanceId") == target:
        return
    reason = (
        f"holds more of its deps than the best free instance {best_free.instance_id}: "
        f"saves ~{decision.saving_s:.0f}s of download for an expected wait of "
        f"~{decision.expected_wait_s:.0f}s"
    )
    record(
        job,
        "waiting",
        now,
        target,
        reason=reason,
        savingSeconds=round(decision.saving_s, 1),
        expectedWaitSeconds=round(decision.expected_wait_s, 1),
    )
    job.updated_at = now


def place_job(
    job: Job,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
    exclude: Collection[str] = (),
    only: str | None = None,
) -> bool:
    """Reserve the best live free instance (or only `only`) for a job now; never waits."""
    outcome = try_place(
        job, session=session, policy=policy, now=now, exclude=exclude, only=only, may_wait=False
    )
    return outcome is Outcome.PLACED


def try_place(
    job: Job,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
    exclude: Collection[str] = (),
    only: str | None = None,
    may_wait: bool = True,
    needs: JobNeeds | None = None,
) -> Outcome:
    """Place a pending job on the best free instance, or let it wait for a busy holder.

    `needs`: the job's, when the caller has them (a submit); else they are read.
    """
    now = now or utcnow()
    needs = needs or job_needs(job, session=session)
    dep_ids, sizes, slots = needs.dep_ids, needs.sizes, needs.slots
    cutoff = now - timedelta(seconds=policy.live_ttl_seconds)
    found = find_candidates(
        job.server_type, sizes, exclude, session=session, cutoff=cutoff, only=only, slots=slots
    )
    ranked = found.free
    if not ranked:
        return Outcome.NO_SLOT
    allowance = _wait_allowance(job, policy, now) if may_wait else 0.0
    if allowance > 0 and missing_deps(ranked[0], dep_ids):
        busy = busy_holders(found.busy_held, session=session, now=now, slots=slots)
        if busy:
            typical = _typical_job_seconds(job.server_type, session=session, policy=policy)
            decision = choose_placement(
                ranked,
                busy,
                sizes,
                bandwidth_bytes_per_s=policy.placement_bandwidth_bytes_per_second,
                max_wait_s=allowance,
                expected_wait_s_for=lambda c: expected_wait_seconds(c.active_elapsed_s, typical),
            )
            if decision.wait_for is not None:
                _record_wait(job, decision, ranked[0], session=session, now=now)
                return Outcome.WAITING
    # Lock only the chosen row (SKIP LOCKED: another placement holds it, try the next);
    # if every row was busy, wait for the best one rather than leave the job pending.
    is_pg = session.get_bind().dialect.name == "postgresql"
    chosen, pins = _claim_best(ranked, slots, session=session, skip_locked=is_pg)
    if chosen is None and is_pg:
        chosen, pins = _claim_best(ranked, slots, session=session, skip_locked=False)
    if chosen is None:
        return Outcome.NO_SLOT
    missing = missing_deps(chosen, dep_ids)
    for dep_id in missing:
        enqueue(
            chosen.instance_id, dep_id, Op.DOWNLOAD, priority=PRIORITY_JOB, session=session, now=now
        )
    # A held dynamic dep is touched, and counts only once the touch succeeded: the
    # inventory may be a heartbeat old, and the file gone since.
    touched = [d for d in dep_ids if d not in missing and needs.is_dynamic(d)]
    for dep_id in touched:
        enqueue(
            chosen.instance_id, dep_id, Op.TOUCH, priority=PRIORITY_JOB, session=session, now=now
        )
    job.instance_id = chosen.instance_id
    job.placements += 1
    job.placed_at = now
    job.state = JobState.WAITING_DEPS.value if missing or touched else JobState.READY.value
    if job.state == JobState.READY.value:
        job.ready_at = now
    job.updated_at = now
    since = _waiting_since(job)
    waited = round((now - since).total_seconds(), 1) if since else None
    record(
        job,
        "placed",
        now,
        chosen.instance_id,
        missingDepIds=missing,
        touchDepIds=touched or None,
        waitedSeconds=waited,
    )
    add_pins(chosen.instance_id, pins, dep_ids, session=session)
    return Outcome.PLACED


def _claim_best(
    ranked: list[Candidate], slots: int, *, session: Session, skip_locked: bool
) -> tuple[Candidate | None, list[str]]:
    """The first of `ranked` whose row this transaction locked with a free slot, and its pins."""
    for candidate in ranked:
        pins = _claim(candidate.instance_id, slots, session=session, skip_locked=skip_locked)
        if pins is not None:
            return candidate, pins
    return None, []


@dataclass(frozen=True)
class Submitted:
    """A submit's answer: the job, whether it is new, and (new jobs) its deps and missing deps."""

    job: Job
    created: bool
    dep_ids: list[str] = field(default_factory=list)
    missing_dep_ids: list[str] = field(default_factory=list)


def submit_job(
    server_type: str,
    dep_ids: list[str],
    job_id: str | None = None,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> Submitted:
    """Create a job and place it if an instance is free.

    Re-submitting the same jobId with the same spec answers the existing job
    (`created` False; its deps are not filled in).
    """
    now = now or utcnow()
    dep_ids = list(dict.fromkeys(dep_ids))
    for dep_id in dep_ids:
        validate_id(dep_id, "depIds[]")
    slots, deps = job_spec(server_type, dep_ids, session=session)
    if slots is None:
        raise ValidationFailed(f"serverType {server_type!r} does not exist")
    unknown = [dep_id for dep_id in dep_ids if dep_id not in deps]
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
            return Submitted(existing, False)
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
    record(job, "submitted", now)
    # The job is written once, at commit, as placement leaves it: nothing placement
    # reads counts a pending job, and its slot is claimed on the instance row.
    with session.no_autoflush:
        outcome = try_place(
            job, session=session, policy=policy, now=now, needs=JobNeeds(dep_ids, deps, slots)
        )
    if outcome is Outcome.NO_SLOT:
        record(job, "pending", now, reason="no live instance of this type has a free slot")
    placed = next((h for h in reversed(job.history) if h["event"] == "placed"), None)
    missing = list(dep_ids)
    if placed is not None:
        unproven = set(placed.get("missingDepIds") or []) | set(placed.get("touchDepIds") or [])
        missing = [d for d in dep_ids if d in unproven]
    return Submitted(job, True, dep_ids, missing)


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

    A job that decides to wait for a busy instance does not stop younger jobs of
    its type from taking the free ones.

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
        outcome = try_place(
            job, session=session, policy=policy, now=now, exclude=exclude, only=only
        )
        if outcome is Outcome.PLACED:
            placed += 1
        elif outcome is Outcome.NO_SLOT:
            full.add(job.server_type)
    return placed, full
