"""The queue-item check field agents (0.9.14+) make before each local retry.

`GET /dependencies/queue-item` answers one item as the agent would see it in the
queue, plus its state, so an agent backing off on an item learns that it was
cancelled, forced to retry now, superseded or finished. The agent drops its retry
when the answer is a 404 whose body says `"exists": false`: an unknown item, or a
generation the server has since replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.mirror import MirrorState
from depman.core.queue import MirrorLink, format_item_id, parse_item_id, resolved_document
from depman.store.models import Dep, MirrorObject, QueueItem


@dataclass(frozen=True)
class ItemCheck:
    """The item document, or why there is none."""

    item: dict[str, Any] | None
    reason: str = ""
    current_item_id: str | None = None


def check_item(
    instance_id: str, item_id: str, *, session: Session, mirror_link: MirrorLink | None = None
) -> ItemCheck:
    """One item of an instance by its itemId (the generation must be the current one)."""
    parsed = parse_item_id(item_id)
    if parsed is None:
        return ItemCheck(None, "not an itemId of this server")
    dep_id, generation = parsed
    found = session.execute(
        select(QueueItem, Dep, MirrorObject.sha256)
        .outerjoin(Dep, Dep.dep_id == QueueItem.dep_id)
        .outerjoin(
            MirrorObject,
            (MirrorObject.sha256 == Dep.sha256)
            & (MirrorObject.state == MirrorState.STORED.value),
        )
        .where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
    ).first()
    if found is None:
        return ItemCheck(None, "no such item")
    row, dep, mirrored = found
    if row.generation != generation:
        current = format_item_id(row.dep_id, row.generation)
        return ItemCheck(None, f"superseded by {current}", current)
    document: dict[str, Any] = {
        "itemId": item_id,
        "depId": row.dep_id,
        "op": row.op,
        "state": row.state,
        "attempts": row.attempts,
        "error": row.error,
        "cancelReason": row.cancel_reason,
        "forceRetry": bool(row.force_retry),
        "forceRetryAfterMs": row.force_retry_after_ms,
        "nextAttemptAt": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "resolved": (
            resolved_document(
                dep.dep_id,
                dep.url,
                dep.auth,
                dep.dest_relative_path,
                dep.sha256,
                dep.expected_size_bytes,
                dep.kind,
                dep.root,
                dep.files,
                dep.sources,
                mirrored=mirrored is not None,
                mirror_link=mirror_link,
            )
            if dep is not None
            else {}
        ),
    }
    return ItemCheck(document)
