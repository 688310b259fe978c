"""Which instances a job may go to: the best free ones and the busy holders of its deps.

A submit must cost the same at 10 or 10,000 instances (loading every live
instance per job made placement O(N) per submit). Each query here is bounded
by the job's deps, the active jobs or the open downloads, never by the fleet, and
none depends on the planner's row estimates (a single ranked join was planned as
nested loops over fresh statistics and took 1.8 s at 3,000 instances):

- the instances with open downloads and their bytes (`queued_bytes`, few);
- the candidates (`find_candidates`, one statement): the holders of the job's
  deps, ranked by (held bytes, held count, free disk, id), with the deps each
  holds, and the best non-holders walked in (free disk, id) order on an index,
  each limited to K + |queued| + a slack. Busy instances are left out of both
  (their ids are hashed once); queued bytes rank between held count and free disk,
  so an instance moves down at most past the |queued| ones: the true best K are
  among the rows read, and `placement.rank_candidates` ranks them exactly. Each row
  also says whether the instance's downloads keep failing (`failing.py`): those go
  after every healthy one, and the slack lets healthy ones further down take their
  place;
- in the same statement, the busy live instances that hold some of the job's
  deps; when one does and the job may wait for it, when its active jobs began
  (`busy_holders`).

Each runs as a Core statement on the session's connection: through the ORM's
execution each cost about twice the Python time, per submit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.failing import FAILING_WINDOW, failing_clause
from depman.core.placement import Candidate, rank_candidates
from depman.core.states import ACTIVE_JOB_STATES, OPEN_ITEM_STATES, Op
from depman.store.models import (
    Dep,
    Instance,
    InstanceDep,
    Job,
    QueueItem,
    UtcDateTime,
)

# Free instances ranked per placement attempt: the best, plus spares for rows that
# another placement holds locked (SKIP LOCKED) at that moment.
CANDIDATE_LIMIT = 32
# Rows read past the limit, so that this many failing instances among the best are
# passed over for healthy ones further down.
FAILING_SLACK = 16


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


_ACTIVE_JOBS = (
    select(Job.instance_id, func.count())
    .where(Job.state.in_(ACTIVE_JOB_STATES), Job.instance_id.is_not(None))
    .group_by(Job.instance_id)
)


def _busy_ids() -> Any:
    """Instances running `p_slots` active jobs or more (PostgreSQL hashes it once)."""
    return (
        _ACTIVE_JOBS.with_only_columns(Job.instance_id)
        .having(func.count() >= bindparam("p_slots", type_=Integer))
    )


_QUEUED_BYTES = (
    select(QueueItem.instance_id, func.sum(func.coalesce(Dep.expected_size_bytes, 0)))
    .join(Dep, Dep.dep_id == QueueItem.dep_id)
    .where(QueueItem.state.in_(OPEN_ITEM_STATES), QueueItem.op == Op.DOWNLOAD.value)
    .group_by(QueueItem.instance_id)
)


def queued_bytes(*, session: Session) -> dict[str, int]:
    """instance id → bytes of its open downloads (few rows)."""
    rows = session.connection().execute(_QUEUED_BYTES)
    return {instance_id: int(n or 0) for instance_id, n in rows}


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


# The job's deps are bound one by one (`p_dep_<i>`, `p_size_<i>`): the holders' sums
# are CASE expressions over them, and what each instance holds comes back as bit sets
# of the deps' positions, MASK_BITS to a column. Summing sizes from the catalog and
# collecting the held ids as text cost PostgreSQL twice the time at 10,000 instances.
MASK_BITS = 62


def _dep_params(dep_ids: list[str], sizes: Mapping[str, int | None]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, dep_id in enumerate(dep_ids):
        params[f"p_dep_{i}"] = dep_id
        params[f"p_size_{i}"] = sizes.get(dep_id) or 0
    return params


def _held_from_masks(masks: Sequence[int | None], dep_ids: list[str]) -> frozenset[str]:
    held = []
    for column, mask in enumerate(masks):
        bits = int(mask or 0)
        base = column * MASK_BITS
        while bits:
            low = bits & -bits
            held.append(dep_ids[base + low.bit_length() - 1])
            bits ^= low
    return frozenset(held)


# The statements below are built once per shape (which filters apply, how many deps,
# which database) and then only bound: building one costs about as much Python as
# running it.
@lru_cache(maxsize=256)
def _candidates_statement(dialect: str, *, exclude: bool, only: bool, deps: int) -> Any:
    """The best free holders and non-holders of the job's deps, and the busy holders,
    in one statement.

    Free holders come ranked by (held bytes, held count, free disk, id), non-holders
    by (free disk, id) on the free-disk index, each limited to `p_limit`; then every
    busy live instance that holds some of the deps (few: busy ones are). Each row
    says whether the instance is busy and whether its downloads keep failing.
    """
    dep_params: list[Any] = [bindparam(f"p_dep_{i}") for i in range(deps)]
    free = func.coalesce(Instance.disk_free_bytes, 0)
    # Hashed once by PostgreSQL, whatever its estimate of their number.
    not_busy = Instance.instance_id.not_in(_busy_ids())
    limit = bindparam("p_limit", type_=Integer)
    masks = (deps + MASK_BITS - 1) // MASK_BITS
    parts = []
    if deps:
        size_of = case(
            *((InstanceDep.dep_id == dep_params[i], bindparam(f"p_size_{i}", type_=BigInteger))
              for i in range(deps)),
            else_=0,
        )
        mask_columns = [
            func.sum(
                case(
                    *((InstanceDep.dep_id == dep_params[i], literal(1 << (i - m * MASK_BITS),
                                                                    BigInteger))
                      for i in range(m * MASK_BITS, min(deps, (m + 1) * MASK_BITS))),
                    else_=0,
                )
            ).label(f"mask_{m}")
            for m in range(masks)
        ]
        held = (
            select(
                InstanceDep.instance_id.label("instance_id"),
                func.sum(size_of).label("held_bytes"),
                func.count().label("held_count"),
                *mask_columns,
            )
            .where(InstanceDep.dep_id.in_(dep_params))
            .group_by(InstanceDep.instance_id)
            .subquery("held")
        )
        # The holdings are summed first and the live instances joined to the sums, so
        # the grouping carries no instance columns.
        holders = (
            select(
                held.c.instance_id,
                free.label("free"),
                literal(False).label("busy"),
                *(held.c[f"mask_{m}"] for m in range(masks)),
            )
            .join(Instance, Instance.instance_id == held.c.instance_id)
            .where(*_filters(exclude=exclude, only=only), not_busy)
            .order_by(
                held.c.held_bytes.desc(),
                held.c.held_count.desc(),
                free.desc(),
                _by_id(held.c.instance_id, dialect),
            )
            .limit(limit)
        )
        # Busy holders may be waited for on any instance, `only` or not.
        busy_holders = (
            select(
                InstanceDep.instance_id,
                free.label("free"),
                literal(True).label("busy"),
                *mask_columns,
            )
            .join(Instance, Instance.instance_id == InstanceDep.instance_id)
            .where(
                *_filters(exclude=exclude, only=False),
                InstanceDep.instance_id.in_(_busy_ids()),
                InstanceDep.dep_id.in_(dep_params),
            )
            .group_by(InstanceDep.instance_id, Instance.disk_free_bytes)
        )
        parts += [select(holders.subquery()), busy_holders]
    non_holders = select(
        Instance.instance_id,
        free.label("free"),
        literal(False).label("busy"),
        *(literal(0, BigInteger).label(f"mask_{m}") for m in range(masks)),
    ).where(*_filters(exclude=exclude, only=only), not_busy)
    if deps:
        holds_any = exists().where(
            InstanceDep.instance_id == Instance.instance_id, InstanceDep.dep_id.in_(dep_params)
        )
        non_holders = non_holders.where(~holds_any)
    # Busy ones are left out in the statement, so only the first rows of the free-disk
    # index are read: asked for more rows and filtered afterwards, PostgreSQL sorts the
    # whole fleet once a hundred instances are busy.
    non_holders = non_holders.order_by(free.desc(), _by_id(Instance.instance_id, dialect)).limit(
        limit
    )
    parts.append(select(non_holders.subquery()))
    rows = union_all(*parts).subquery("ranked") if len(parts) > 1 else parts[0].subquery("ranked")
    return select(
        rows.c.instance_id,
        rows.c.free,
        rows.c.busy,
        failing_clause(rows.c.instance_id, bindparam("p_since", type_=UtcDateTime())),
        *(rows.c[f"mask_{m}"] for m in range(masks)),
    )


@dataclass(frozen=True)
class Candidates:
    """Where a job may go now, and which busy instances it might wait for."""

    free: list[Candidate]  # the best free ones, best first
    busy_held: dict[str, frozenset[str]]  # busy live instance → the job's deps it holds


def find_candidates(
    server_type: str,
    job_deps: Mapping[str, int | None],
    exclude: Collection[str],
    *,
    session: Session,
    cutoff: datetime,
    slots: int,
    only: str | None = None,
    limit: int = CANDIDATE_LIMIT,
) -> Candidates:
    """The best `limit` live instances of the type with a free slot, best first, and the
    busy ones that hold some of the job's deps.

    `job_deps` maps the job's dep ids, in order, to their sizes (None: unknown);
    `slots` is the type's jobs per instance. Instances whose downloads keep failing
    come after every healthy one read.
    """
    dep_ids = list(job_deps)
    conn = session.connection()
    queued = queued_bytes(session=session)
    statement = _candidates_statement(
        conn.dialect.name, exclude=bool(exclude), only=only is not None, deps=len(dep_ids)
    )
    params: dict[str, Any] = {
        "p_server_type": server_type,
        "p_cutoff": cutoff,
        "p_only": only,
        "p_exclude": list(exclude),
        "p_slots": slots,
        "p_since": utcnow() - FAILING_WINDOW,
        # Queued bytes rank between held count and free disk, so an instance moves
        # down at most past the |queued| ones: the true best `limit` are among these,
        # with `FAILING_SLACK` more for failing ones to be passed over.
        "p_limit": limit + FAILING_SLACK + len(queued),
        **_dep_params(dep_ids, job_deps),
    }
    free: list[Candidate] = []
    busy_held: dict[str, frozenset[str]] = {}
    for instance_id, free_bytes, busy, failing, *masks in conn.execute(statement, params):
        held = _held_from_masks(masks, dep_ids)
        if busy:
            busy_held[instance_id] = held
            continue
        free.append(
            Candidate(
                instance_id=instance_id,
                held_dep_ids=held,
                queued_bytes=queued.get(instance_id, 0),
                free_bytes=int(free_bytes or 0),
                failing=bool(failing),
            )
        )
    return Candidates(rank_candidates(free, job_deps)[:limit], busy_held)


_PLACED_AT = select(Job.instance_id, Job.placed_at).where(
    Job.instance_id.in_(bindparam("p_ids", expanding=True)), Job.state.in_(ACTIVE_JOB_STATES)
)


def busy_holders(
    busy_held: Mapping[str, frozenset[str]], *, session: Session, now: datetime, slots: int
) -> list[Candidate]:
    """The busy holders of `find_candidates`, with how long each active job there has run."""
    if not busy_held:
        return []
    placed: dict[str, list[datetime]] = {}
    rows = session.connection().execute(_PLACED_AT, {"p_ids": list(busy_held)})
    for busy_id, placed_at in rows:
        placed.setdefault(busy_id or "", []).append(placed_at or now)
    return [
        Candidate(
            instance_id=instance_id,
            held_dep_ids=deps,
            active_elapsed_s=tuple(
                max(0.0, (now - at).total_seconds()) for at in placed[instance_id]
            ),
        )
        for instance_id, deps in busy_held.items()
        if len(placed.get(instance_id, ())) >= slots
    ]
