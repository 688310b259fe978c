"""Bytes per source kind: how much of what the fleet downloaded came from the mirror, how much
from the upstreams, per instance and per job.

depman's agent says so in its status reports (`bytesBySource`, `servedBy`). A field
agent says nothing: its successful download counts the catalog size, as mirror bytes
when the file was in the mirror before the agent took the item (it was then handed
the mirror's URL, `core.queue.resolved_document`), else as upstream bytes.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from depman.core.mirror import stored_before
from depman.core.receipts import Receipt
from depman.core.states import ACTIVE_JOB_STATES, ItemState, Op
from depman.store.models import Dep, Instance, Job, JobDep, QueueItem


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


def record_source_bytes(
    instance_id: str,
    dep_id: str,
    report: SourceReport,
    state: str | None,
    *,
    session: Session,
    mirror_enabled: bool,
) -> None:
    """Add a report's bytes to its instance and to the active jobs there that need the dep."""
    mirror, upstream = _bytes_of(
        instance_id, dep_id, report, state, session=session, mirror_enabled=mirror_enabled
    )
    if not mirror and not upstream:
        return
    added = {
        "mirror_bytes": Instance.mirror_bytes + mirror,
        "upstream_bytes": Instance.upstream_bytes + upstream,
    }
    session.execute(update(Instance).where(Instance.instance_id == instance_id).values(added))
    # The instance's active jobs (an index), each probed for the dep by primary key.
    needs_dep = exists().where(JobDep.job_id == Job.job_id, JobDep.dep_id == dep_id)
    session.execute(
        update(Job)
        .where(Job.instance_id == instance_id, Job.state.in_(ACTIVE_JOB_STATES), needs_dep)
        .values(
            mirror_bytes=Job.mirror_bytes + mirror,
            upstream_bytes=Job.upstream_bytes + upstream,
        )
    )


def _bytes_of(
    instance_id: str,
    dep_id: str,
    report: SourceReport,
    state: str | None,
    *,
    session: Session,
    mirror_enabled: bool,
) -> tuple[int, int]:
    if report.mirror_bytes is not None or report.upstream_bytes is not None:
        return report.mirror_bytes or 0, report.upstream_bytes or 0
    if report.state != ItemState.SUCCEEDED.value or state != ItemState.SUCCEEDED.value:
        return 0, 0
    found = session.execute(
        select(QueueItem.op, QueueItem.started_at, QueueItem.enqueued_at, Dep.sha256,
               Dep.expected_size_bytes)
        .join(Dep, Dep.dep_id == QueueItem.dep_id)
        .where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
    ).first()
    if found is None or found.op != Op.DOWNLOAD.value:
        return 0, 0
    size = report.receipt.size_bytes if report.receipt and report.receipt.size_bytes else None
    size = size or found.expected_size_bytes
    if not size:
        return 0, 0
    kind = report.served_by
    if kind not in KINDS:
        taken = found.started_at or found.enqueued_at
        from_mirror = mirror_enabled and stored_before(found.sha256, taken, session=session)
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
