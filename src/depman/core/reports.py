"""What an agent's status reports do: move the item, keep the disk figures, handle failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, func, not_, select, update
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.inventory import SCALAR_COLUMNS
from depman.core.jobs import on_dep_failed, refresh_instance_jobs
from depman.core.policy import Policy
from depman.core.queue import Transition, apply_item_state
from depman.core.receipts import Receipt, store_receipt
from depman.core.retries import apply_retrying
from depman.core.source_bytes import record_source_bytes
from depman.core.states import REPORT_RETRYING, ItemState, Op
from depman.core.static_retries import schedule_retry
from depman.core.upstream import wake_waiters
from depman.store.models import Instance, Job, QueueItem

# A heartbeat's figures but the queue depth, in the same order (SCALAR_COLUMNS).
FIGURES = SCALAR_COLUMNS[:4]


@dataclass(frozen=True)
class StatusReport:
    """One `POST /dependencies/status` body, snake_cased."""

    item_id: str
    state: str
    dep_id: str | None = None
    op: str | None = None
    error: str | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_used_bytes: int | None = None
    dynamic_bytes_used: int | None = None
    receipt: Receipt | None = None
    # depman's agent: which kind of source served the file, bytes received per kind.
    served_by: str | None = None
    mirror_bytes: int | None = None
    upstream_bytes: int | None = None


def _figures_statement() -> Any:
    # Figures the report leaves out keep their stored value, and a row whose figures
    # are already these is not touched at all: no write, no row lock (a status report
    # otherwise waited behind the batched heartbeat write).
    new = {
        name: func.coalesce(bindparam(f"p_{name}", type_=BigInteger), getattr(Instance, name))
        for name in FIGURES
    }
    same = and_(*(getattr(Instance, name).is_not_distinct_from(new[name]) for name in FIGURES))
    return (
        update(Instance)
        .where(Instance.instance_id == bindparam("p_instance_id"), not_(same))
        .values(**new)
    )


FIGURES_STATEMENT = _figures_statement()
# The instance row, locked, with the figures it holds: a report that restates them
# writes nothing more.
LOCK_INSTANCE = (
    select(*(getattr(Instance, name) for name in FIGURES))
    .where(Instance.instance_id == bindparam("p_instance_id"))
    .with_for_update()
)


def record_report(
    instance_id: str,
    report: StatusReport,
    *,
    conn: Connection,
    now: datetime | None = None,
    stored: Sequence[int | None] | None = None,
) -> Transition:
    """Move the item and keep the disk figures; two statements, each standing alone.

    All a `running` or `succeeded` report does (`apply_status` adds what a failure does).
    `stored`: the figures the caller read from the locked row (`record_figures`).
    """
    result = apply_item_state(
        instance_id, report.item_id, report.state, report.error, conn=conn, now=now or utcnow()
    )
    record_figures(instance_id, report, conn=conn, stored=stored)
    return result


def record_figures(
    instance_id: str,
    report: StatusReport,
    *,
    conn: Connection,
    stored: Sequence[int | None] | None = None,
) -> None:
    """Keep the disk figures a report carries (nothing written when they are the stored ones).

    `stored`: the row's figures, read under its lock; when the report restates them,
    no statement is sent at all.
    """
    values = [getattr(report, name) for name in FIGURES]
    if all(value is None for value in values):
        return
    if stored is not None and all(
        value is None or value == kept for value, kept in zip(values, stored, strict=True)
    ):
        return
    params: dict[str, Any] = {f"p_{name}": v for name, v in zip(FIGURES, values, strict=True)}
    params["p_instance_id"] = instance_id
    conn.execute(FIGURES_STATEMENT, params)


def apply_status(
    instance_id: str,
    report: StatusReport,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> Transition:
    """Apply a status report: move the item, keep the disk figures, and what follows.

    Every `succeeded`, `failed`, `retrying` and `cancelled` report ends here (a
    `running` one only moves its item: `record_report`), so their rules live in
    one place: a receipt proving the dep installed and jobs going ready
    (`on_item_succeeded`), jobs moving or failing and retries (`on_item_failed`).
    """
    now = now or utcnow()
    conn = session.connection()
    stored = None
    if report.state == ItemState.SUCCEEDED.value:
        # Instance row first, then the item: the lock order of heartbeats, which
        # also write both (a receipt may add an inventory row and clear the digest).
        stored = conn.execute(LOCK_INSTANCE, {"p_instance_id": instance_id}).first()
    if report.state == REPORT_RETRYING:
        result = apply_retrying(
            instance_id, report.item_id, report.error, session=session, policy=policy, now=now
        )
        record_figures(instance_id, report, conn=conn)
    else:
        result = record_report(instance_id, report, conn=conn, now=now, stored=stored)
        if (
            not result.applied
            and result.reason == "old generation"
            and report.state in (ItemState.FAILED.value, ItemState.CANCELLED.value)
            and result.state == ItemState.QUEUED.value
        ):
            # A failure of a generation the server has since queued again.
            result = replace(result, clear_failed=True)
    if (result.applied or report.state == REPORT_RETRYING) and result.dep_id is not None:
        record_source_bytes(
            instance_id, result.dep_id, report, result,
            session=session, mirror_enabled=policy.mirror_enabled,
        )
    if not result.applied or result.dep_id is None:
        return result
    if result.state != ItemState.RUNNING.value:
        # Its upstream slot is free (a running download keeps it): wake who waits for it.
        wake_waiters(result.upstream_host, session=session)
    if result.state == ItemState.SUCCEEDED.value:
        on_item_succeeded(
            instance_id, result.dep_id, report.item_id, report.receipt, session=session, now=now
        )
    elif result.state in (ItemState.FAILED.value, ItemState.CANCELLED.value):
        on_item_failed(
            instance_id,
            result.dep_id,
            result.op,
            result.error or "failed",
            session=session,
            policy=policy,
            now=now,
        )
    return result


def on_item_succeeded(
    instance_id: str,
    dep_id: str,
    item_id: str,
    receipt: Receipt | None,
    *,
    session: Session,
    now: datetime,
) -> list[Job]:
    """An item succeeded: keep its receipt; jobs whose last unproven dep this was go ready.

    A matching receipt marks the dep installed at once (`store_receipt`); without
    one (a v1 agent) the dep counts once a heartbeat lists it. Either way a `touch`
    that succeeded now lets its dep count (`refresh_instance_jobs`).
    """
    if receipt is not None:
        store_receipt(instance_id, dep_id, item_id, receipt, session=session, now=now)
    return refresh_instance_jobs(instance_id, None, session=session, now=now, dep_id=dep_id)


def on_item_failed(
    instance_id: str,
    dep_id: str,
    op: str | None,
    error: str,
    *,
    session: Session,
    policy: Policy,
    now: datetime,
) -> None:
    """An item failed: waiting jobs move or fail (download), re-download (touch), retry later.

    A failed touch means the agent did not find the file: the jobs that wait for it
    get the download queued again. A failed static or prefetch download is queued
    again after a backoff (`schedule_retry`).
    """
    if op == Op.TOUCH.value:
        refresh_instance_jobs(instance_id, None, session=session, now=now, dep_id=dep_id)
        return
    if op != Op.DOWNLOAD.value:
        return
    on_dep_failed(instance_id, dep_id, error, session=session, policy=policy, now=now)
    item = session.scalar(
        select(QueueItem).where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
    )
    if item is not None and item.state == ItemState.FAILED.value:
        schedule_retry(
            item,
            base=policy.retry_backoff_seconds,
            ceiling=policy.retry_backoff_max_seconds,
            now=now,
        )
