"""Bytes per source kind: how much of what the fleet downloaded came from the mirror, how much
from the upstreams, per instance and per job.

depman's agent says so in its status reports (`bytesBySource`, `servedBy`). A field
agent says nothing: its successful download counts the catalog size, as mirror bytes
when the file was in the mirror before the agent took the item (it was then handed
the mirror's URL, `core.queue.resolved_document`), else as upstream bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Connection, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from depman.core.mirror import stored_before
from depman.core.receipts import Receipt
from depman.core.states import ACTIVE_JOB_STATES, ItemState, Op
from depman.store.models import Dep, Instance, Job, JobDep


class SourceReport(Protocol):
    """What this module reads of a status report (`core.reports.StatusReport`)."""

    @property
    def state(self) -> str: ...
    @property
    def receipt(self) -> Receipt | None: ...
    @property
    def served_by(self) -> str | None: ...
    @property
    def mirror_bytes(self) -> int | None: ...
    @property
    def upstream_bytes(self) -> int | None: ...


KINDS = ("mirror", "upstream")


def _added_statements() -> tuple[Any, Any, Any]:
    # Built once: a status report only binds parameters (building one costs about a
    # millisecond of Python).
    mirror = bindparam("p_mirror", type_=BigInteger)
    upstream = bindparam("p_upstream", type_=BigInteger)
    instance: Any = bindparam("p_instance_id")
    to_instance = (
        update(Instance)
        .where(Instance.instance_id == instance)
        .values(
            mirror_bytes=Instance.mirror_bytes + mirror,
            upstream_bytes=Instance.upstream_bytes + upstream,
        )
    )
    # The instance's active jobs (an index), each probed for the dep by primary key.
    needs_dep = exists().where(JobDep.job_id == Job.job_id, JobDep.dep_id == bindparam("p_dep_id"))
    to_jobs = (
        update(Job)
        .where(Job.instance_id == instance, Job.state.in_(ACTIVE_JOB_STATES), needs_dep)
        .values(
            mirror_bytes=Job.mirror_bytes + mirror,
            upstream_bytes=Job.upstream_bytes + upstream,
        )
    )
    dep = select(Dep.sha256, Dep.expected_size_bytes).where(Dep.dep_id == bindparam("p_dep_id"))
    return to_instance, to_jobs, dep


TO_INSTANCE, TO_JOBS, DEP_FACTS = _added_statements()


class ItemFacts(Protocol):
    """What this module reads of the item a report moved (`core.queue.Transition`)."""

    @property
    def state(self) -> str | None: ...
    @property
    def op(self) -> str | None: ...
    @property
    def taken_at(self) -> datetime | None: ...
    @property
    def dep_facts(self) -> tuple[str | None, int | None] | None: ...


def record_source_bytes(
    instance_id: str,
    dep_id: str,
    report: SourceReport,
    item: ItemFacts,
    *,
    session: Session,
    mirror_enabled: bool,
) -> None:
    """Add a report's bytes to its instance and to the active jobs there that need the dep."""
    conn = session.connection()
    mirror, upstream = _bytes_of(dep_id, report, item, conn=conn, mirror_enabled=mirror_enabled)
    if not mirror and not upstream:
        return
    params = {
        "p_instance_id": instance_id,
        "p_dep_id": dep_id,
        "p_mirror": mirror,
        "p_upstream": upstream,
    }
    conn.execute(TO_INSTANCE, params)
    conn.execute(TO_JOBS, params)


def _bytes_of(
    dep_id: str,
    report: SourceReport,
    item: ItemFacts,
    *,
    conn: Connection,
    mirror_enabled: bool,
) -> tuple[int, int]:
    if report.mirror_bytes is not None or report.upstream_bytes is not None:
        return report.mirror_bytes or 0, report.upstream_bytes or 0
    if report.state != ItemState.SUCCEEDED.value or item.state != ItemState.SUCCEEDED.value:
        return 0, 0
    if item.op != Op.DOWNLOAD.value:
        return 0, 0
    facts = item.dep_facts
    if facts is None:
        found = conn.execute(DEP_FACTS, {"p_dep_id": dep_id}).first()
        if found is None:
            return 0, 0
        facts = (found.sha256, found.expected_size_bytes)
    sha256, expected_size = facts
    size = report.receipt.size_bytes if report.receipt and report.receipt.size_bytes else None
    size = size or expected_size
    if not size:
        return 0, 0
    kind = report.served_by
    if kind not in KINDS:
        from_mirror = mirror_enabled and stored_before(sha256, item.taken_at, conn=conn)
        kind = "mirror" if from_mirror else "upstream"
    return (size, 0) if kind == "mirror" else (0, size)


def fleet_source_bytes(*, session: Session) -> dict[str, int]:
    """Bytes every known instance received, per source kind (for /metrics and the dashboard)."""
    mirror, upstream = session.execute(
        select(
            func.coalesce(func.sum(Instance.mirror_bytes), 0),
            func.coalesce(func.sum(Instance.upstream_bytes), 0),
        )
    ).one()
    return {"mirror": int(mirror), "upstream": int(upstream)}
