"""What an agent's status reports do: move the item, keep the disk figures, handle failures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, func, not_, update
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.inventory import SCALAR_COLUMNS
from depman.core.jobs import on_dep_failed
from depman.core.policy import Policy
from depman.core.queue import Transition, apply_item_state
from depman.core.retries import apply_retrying
from depman.core.states import REPORT_RETRYING, ItemState, Op
from depman.store.models import Instance

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


def _figures_statement() -> Any:
    # Figures the report leaves out keep their stored value, and a row whose figures
    # are already these is not touched at all: no write, no row lock (a status report
    # otherwise waited behind the batched heartbeat write; issue 5).
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


def record_report(
    instance_id: str,
    report: StatusReport,
    *,
    conn: Connection,
    now: datetime | None = None,
    stored_figures: tuple[int | None, ...] | None = None,
) -> Transition:
    """Move the item and keep the disk figures; two statements, each standing alone.

    All a `running` or `succeeded` report does (`apply_status` adds what a failure does).
    `stored_figures`: the row's FIGURES when the caller knows them (a memo); a report
    that repeats them writes nothing.
    """
    result = apply_item_state(
        instance_id, report.item_id, report.state, report.error, conn=conn, now=now or utcnow()
    )
    record_figures(instance_id, report, conn=conn, stored_figures=stored_figures)
    return result


def record_figures(
    instance_id: str,
    report: StatusReport,
    *,
    conn: Connection,
    stored_figures: tuple[int | None, ...] | None = None,
) -> None:
    """Keep the disk figures a report carries (nothing written when they are the stored ones)."""
    values = [getattr(report, name) for name in FIGURES]
    if stored_figures is not None and all(
        new is None or new == old for new, old in zip(values, stored_figures, strict=True)
    ):
        return
    params: dict[str, Any] = {f"p_{name}": v for name, v in zip(FIGURES, values, strict=True)}
    if any(value is not None for value in values):
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
    """Apply a status report: move the item, keep the disk figures, handle a failed download.

    Every path that answers a status report ends here for `failed`, `retrying` and
    `cancelled` (the quick lane takes only `running` and `succeeded`), so their rules
    live in one place.
    """
    now = now or utcnow()
    if report.state == REPORT_RETRYING:
        result = apply_retrying(
            instance_id, report.item_id, report.error, session=session, policy=policy, now=now
        )
        record_figures(instance_id, report, conn=session.connection())
    else:
        result = record_report(instance_id, report, conn=session.connection(), now=now)
        if (
            not result.applied
            and result.reason == "old generation"
            and report.state in (ItemState.FAILED.value, ItemState.CANCELLED.value)
            and result.state == ItemState.QUEUED.value
        ):
            # A failure of a generation the server has since queued again.
            result = replace(result, clear_failed=True)
    if (
        result.applied
        and result.state in (ItemState.FAILED.value, ItemState.CANCELLED.value)
        and result.op == Op.DOWNLOAD.value
        and result.dep_id is not None
    ):
        on_dep_failed(
            instance_id,
            result.dep_id,
            result.error or "failed",
            session=session,
            policy=policy,
            now=now,
        )
    return result
