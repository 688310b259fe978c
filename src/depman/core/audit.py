"""The operator audit log: every action an operator takes, who took it and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.clock import isoformat, utcnow
from depman.store.models import OperatorAction

ACTOR_MAX_CHARS = 200


def record_action(
    actor: str,
    action: str,
    *,
    session: Session,
    instance_id: str | None = None,
    dep_id: str | None = None,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> OperatorAction:
    """Write one row, in the caller's transaction: the action and its record commit together."""
    row = OperatorAction(
        at=now or utcnow(),
        actor=(actor or "unknown")[:ACTOR_MAX_CHARS],
        action=action,
        instance_id=instance_id,
        dep_id=dep_id,
        job_id=job_id,
        detail=detail or {},
    )
    session.add(row)
    session.flush()
    return row


def list_actions(
    *,
    session: Session,
    instance_id: str | None = None,
    job_id: str | None = None,
    limit: int = 100,
) -> list[OperatorAction]:
    """Newest first, optionally about one instance or one job."""
    stmt = select(OperatorAction)
    if instance_id:
        stmt = stmt.where(OperatorAction.instance_id == instance_id)
    if job_id:
        stmt = stmt.where(OperatorAction.job_id == job_id)
    return list(
        session.scalars(
            stmt.order_by(OperatorAction.at.desc(), OperatorAction.id.desc()).limit(limit)
        )
    )


def action_document(row: OperatorAction) -> dict[str, Any]:
    """An audit row as the API and the dashboard show it."""
    return {
        "id": row.id,
        "at": isoformat(row.at),
        "actor": row.actor,
        "action": row.action,
        "instanceId": row.instance_id,
        "depId": row.dep_id,
        "jobId": row.job_id,
        "detail": dict(row.detail or {}),
    }
