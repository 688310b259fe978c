"""Which instances a job may go to: the best free ones and the busy holders of its deps.

A submit must cost the same at 10 or 10,000 instances (loading every live
instance per job made placement O(N) per submit). Each query here is bounded
by the job's deps, the active jobs or the open downloads, never by the fleet, and
none depends on the planner's row estimates (a single ranked join was planned as
nested loops over fresh statistics and took 1.8 s at 3,000 instances):

- `active`: instances with active jobs (few: one per running job);
- `queued`: instances with open downloads and their bytes (few);
- holders of the job's deps, ranked by (held bytes, held count, free disk, id),
  with the deps each holds, limited to K + |queued| + |busy|, and the best
  non-holders by (free disk, id) with a free slot, limited to K + |queued|. Queued
  bytes rank between held count and free disk, so an instance moves down at most
  past the |queued| ones, and busy ones are dropped: the true best K are always
  among the rows fetched. The non-holders' statement leaves out the busy ones
  itself, so it reads only the first rows of the free-disk index: asked for
  K + |queued| + |busy| rows with the busy ones filtered out afterwards,
  PostgreSQL sorts the whole fleet instead once a hundred instances are busy.
  `placement.rank_candidates` then ranks them exactly;
- instances whose downloads keep failing (`failing.py`): looked up among the
  ranked rows, best first, K at a time, and moved after the healthy ones.

Each runs as a Core statement on the session's connection: through the ORM's
execution each cost about twice the Python time, per submit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, exists, func, or_, select
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.failing import failing_instances
from depman.core.placement import Candidate, rank_candidates
from depman.core.states import ACTIVE_JOB_STATES, OPEN_ITEM_STATES, Op
from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    QueueItem,
    ServerType,
    UtcDateTime,
)

# Free instances ranked per placement attempt: the best, plus spares for rows that
# another placement holds locked (SKIP LOCKED) at that moment.
CANDIDATE_LIMIT = 32


def live(server_type: Any, cutoff: Any) -> tuple[Any, ...]:
    """Filters of the live instances of a server type that may get jobs."""
    return (
        Instance.server_type == server_type,
        Instance.last_heartbeat_at >= cutoff,
        Instance.lost_at.is_(None),  # swept as lost: it must register again first
        # A re-registered agent has not yet said what it holds: its inventory rows are
        # from before the restart, and files may have gone meanwhile (e2e crash test).
        or_(Instance.registered_at.is_(None), Instance.last_heartbeat_at >= Instance.registered_at),
        # An operator drained it: its jobs finish there, no new ones come.
        Instance.drained.is_(False),
    )


def max_active_jobs(server_type: str, *, session: Session) -> int:
    """Job slots per instance of the type."""
    row = session.get(ServerType, server_type)
    return row.max_active_jobs if row else 1


_ACTIVE_JOBS = (
    select(Job.instance_id, func.count())
    .where(Job.state.in_(ACTIVE_JOB_STATES), Job.instance_id.is_not(None))
    .group_by(Job.instance_id)
)
_QUEUED_BYTES = (
    select(QueueItem.instance_id, func.sum(func.coalesce(Dep.expected_size_bytes, 0)))
    .join(Dep, Dep.dep_id == QueueItem.dep_id)
    .where(QueueItem.state.in_(OPEN_ITEM_STATES), QueueItem.op == Op.DOWNLOAD.value)
    .group_by(QueueItem.instance_id)
)


def active_jobs(*, session: Session) -> dict[str, int]:
    """instance id → number of its active jobs."""
    rows = session.connection().execute(_ACTIVE_JOBS)
    return {instance_id: int(n) for instance_id, n in rows if instance_id is not None}


def queued_bytes(*, session: Session) -> dict[str, int]:
    """instance id → bytes of its open downloads."""
    rows = session.connection().execute(_QUEUED_BYTES)
    return {instance_id: int(n or 0) for instance_id, n in rows}


def _has_free_slot() -> Any:
    """The instance runs fewer than `p_slots` active jobs (what `active_jobs` counts)."""
    running = (
        select(func.count())
        .select_from(Job)
        .where(Job.instance_id == Instance.instance_id, Job.state.in_(ACTIVE_JOB_STATES))
        .scalar_subquery()
    )
    return running < bindparam("p_slots", type_=Integer)


def _by_id(column: Any, dialect: str) -> Any:
    # Python's str order on PostgreSQL too, as rank_candidates breaks ties.
    return column.collate("C") if dialect == "postgresql" else column


def _filters(*, exclude: bool, only: bool) -> tuple[Any, ...]:
    """`live` as parameters (`p_server_type`, `p_cutoff`), with the caller's exclusions."""
    filters = live(bindparam("p_server_type"), bindparam("p_cutoff", type_=UtcDateTime()))
    if only:
        filters = (*filters, Instance.instance_id == bindparam("p_only"))
    if exclude:
        filters = (*filters, Instance.instance_id.not_in(bindparam("p_exclude", expanding=True)))
    return filters


# The statements below are built once per shape (which filters apply, which database)
# and then only bound: building one costs about as much Python as running it.
@cache
def _holders_statement(dialect: str, *, exclude: bool, only: bool) -> Any:
    """Holders of `p_dep_ids`, ranked by (held bytes, held count, free disk, id).

    The holdings are summed first and the live instances joined to the sums, so the
    grouping carries no instance columns (a third faster at 10,000 instances).
    """
    held = (
        select(
            InstanceDep.instance_id.label("instance_id"),
            func.sum(func.coalesce(Dep.expected_size_bytes, 0)).label("held_bytes"),
            func.count().label("held_count"),
            # Dep ids hold no whitespace (catalog.validate_id): a space separates them.
            func.aggregate_strings(InstanceDep.dep_id, " ").label("held_ids"),
        )
        .join(Dep, Dep.dep_id == InstanceDep.dep_id)
        .where(InstanceDep.dep_id.in_(bindparam("p_dep_ids", expanding=True)))
        .group_by(InstanceDep.instance_id)
        .subquery("held")
    )
    free = func.coalesce(Instance.disk_free_bytes, 0)
    return (
        select(held.c.instance_id, free, held.c.held_ids)
        .join(Instance, Instance.instance_id == held.c.instance_id)
        .where(*_filters(exclude=exclude, only=only))
        .order_by(
            held.c.held_bytes.desc(),
            held.c.held_count.desc(),
            free.desc(),
            _by_id(held.c.instance_id, dialect),
        )
        .limit(bindparam("p_limit", type_=Integer))
    )


@cache
def _non_holders_statement(
    dialect: str, *, exclude: bool, only: bool, has_deps: bool, busy: bool
) -> Any:
    """The best instances by (free disk, id) that hold none of `p_dep_ids`."""
    free = func.coalesce(Instance.disk_free_bytes, 0)
    statement = select(Instance.instance_id, free).where(*_filters(exclude=exclude, only=only))
    if has_deps:
        holds_any = exists().where(
            InstanceDep.instance_id == Instance.instance_id,
            InstanceDep.dep_id.in_(bindparam("p_dep_ids", expanding=True)),
        )
        statement = statement.where(~holds_any)
    if busy:
        statement = statement.where(_has_free_slot())
    return statement.order_by(free.desc(), _by_id(Instance.instance_id, dialect)).limit(
        bindparam("p_limit", type_=Integer)
    )


def free_candidates(
    server_type: str,
    job_deps: Mapping[str, int | None],
    exclude: Collection[str],
    *,
    session: Session,
    cutoff: datetime,
    slots: int,
    active: Mapping[str, int],
    only: str | None = None,
    limit: int = CANDIDATE_LIMIT,
) -> list[Candidate]:
    """The best `limit` live instances of the type with a free slot, best first.

    `job_deps` maps the job's dep ids, in order, to their sizes (None: unknown);
    `slots` is the type's jobs per instance, `active` the `active_jobs()` counts.
    """
    dep_ids = list(job_deps)
    conn = session.connection()
    dialect = conn.dialect.name
    queued = queued_bytes(session=session)
    busy = [i for i, n in active.items() if n >= slots]
    shape = {"exclude": bool(exclude), "only": only is not None}
    params: dict[str, Any] = {
        "p_server_type": server_type,
        "p_cutoff": cutoff,
        "p_only": only,
        "p_exclude": list(exclude),
        "p_dep_ids": dep_ids,
        "p_slots": slots,
    }
    rows: list[tuple[str, int, frozenset[str]]] = []
    if dep_ids:
        holders = _holders_statement(dialect, **shape)
        rows += [
            (instance_id, int(free_bytes or 0), frozenset(held_ids.split(" ")))
            for instance_id, free_bytes, held_ids in conn.execute(
                holders, {**params, "p_limit": limit + len(queued) + len(busy)}
            )
        ]
    non_holders = _non_holders_statement(
        dialect, **shape, has_deps=bool(dep_ids), busy=bool(busy)
    )
    rows += [
        (instance_id, int(free_bytes or 0), frozenset())
        for instance_id, free_bytes in conn.execute(
            non_holders, {**params, "p_limit": limit + len(queued)}
        )
    ]
    candidates = [
        Candidate(
            instance_id=instance_id,
            held_dep_ids=held_ids,
            queued_bytes=queued.get(instance_id, 0),
            free_bytes=free_bytes,
        )
        for instance_id, free_bytes, held_ids in rows
        if active.get(instance_id, 0) < slots
    ]
    return _failing_last(rank_candidates(candidates, job_deps), limit, session=session)


def _failing_last(ranked: list[Candidate], limit: int, *, session: Session) -> list[Candidate]:
    """The best `limit` of `ranked`, the failing instances after every healthy one.

    Checked `limit` at a time, best first, until `limit` healthy ones are found: none
    further down can rank above them. Each check names exactly `limit` ids (a short
    last chunk repeats its last id), so the statement's text and its prepared plan stay
    the same from one submit to the next.
    """
    healthy: list[Candidate] = []
    failing: list[Candidate] = []
    now = utcnow()
    for start in range(0, len(ranked), limit):
        chunk = ranked[start : start + limit]
        ids = [candidate.instance_id for candidate in chunk]
        bad = failing_instances(ids + ids[-1:] * (limit - len(ids)), session=session, now=now)
        for candidate in chunk:
            if candidate.instance_id in bad:
                failing.append(replace(candidate, failing=True))
            else:
                healthy.append(candidate)
        if len(healthy) >= limit:
            break
    return (healthy + failing)[:limit]


_BUSY_HOLDINGS = (
    select(InstanceDep.instance_id, InstanceDep.dep_id)
    .join(Instance, Instance.instance_id == InstanceDep.instance_id)
    .where(
        *_filters(exclude=False, only=False),
        InstanceDep.instance_id.in_(bindparam("p_busy", expanding=True)),
        InstanceDep.dep_id.in_(bindparam("p_dep_ids", expanding=True)),
    )
)
_PLACED_AT = select(Job.instance_id, Job.placed_at).where(
    Job.instance_id.in_(bindparam("p_ids", expanding=True)), Job.state.in_(ACTIVE_JOB_STATES)
)


def busy_holders(
    server_type: str,
    dep_ids: list[str],
    exclude: Collection[str],
    *,
    session: Session,
    cutoff: datetime,
    now: datetime,
    slots: int,
    active: Mapping[str, int],
) -> list[Candidate]:
    """Live instances of the type with no free slot that hold some of the deps."""
    busy = [i for i, n in active.items() if n >= slots]
    if not busy or not dep_ids:
        return []
    conn = session.connection()
    held: dict[str, set[str]] = {}
    params = {
        "p_server_type": server_type,
        "p_cutoff": cutoff,
        "p_busy": busy,
        "p_dep_ids": dep_ids,
    }
    for instance_id, dep_id in conn.execute(_BUSY_HOLDINGS, params):
        if instance_id not in exclude:
            held.setdefault(instance_id, set()).add(dep_id)
    if not held:
        return []
    placed: dict[str, list[datetime]] = {}
    for busy_id, placed_at in conn.execute(_PLACED_AT, {"p_ids": list(held)}):
        placed.setdefault(busy_id or "", []).append(placed_at or now)
    return [
        Candidate(
            instance_id=instance_id,
            held_dep_ids=frozenset(deps),
            active_elapsed_s=tuple(
                max(0.0, (now - at).total_seconds()) for at in placed[instance_id]
            ),
        )
        for instance_id, deps in held.items()
        if len(placed.get(instance_id, ())) >= slots
    ]
