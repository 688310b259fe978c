"""Verification receipts: what an agent proved of a file when it reported `succeeded`.

A receipt that matches the catalog (the sha256 when the catalog has one, else the
expected size; the same destination; `finalPathVerified`) marks the dep installed
on the instance at once, in the transaction of the report, so a job waiting only
for it goes `ready` without waiting for a heartbeat. A receipt that does not match
is kept (the operator sees it) but proves nothing; the heartbeat stays the truth.
Heartbeats keep correcting: one that does not list the dep removes the row again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from depman.store.models import Dep, DepReceipt, Instance, InstanceDep

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ALGORITHMS = ("sha256", "size")


@dataclass(frozen=True)
class Receipt:
    """A `verification` object of a `succeeded` status, snake_cased and normalised."""

    algorithm: str
    sha256: str | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None
    verified_at_ms: int | None = None
    dest_relative_path: str | None = None
    final_path_verified: bool = False
    agent_version: str | None = None


def matches_catalog(receipt: Receipt, dep: Dep) -> bool:
    """Whether the receipt proves the catalog's file is at the catalog's destination."""
    if not receipt.final_path_verified or receipt.algorithm not in ALGORITHMS:
        return False
    if receipt.dest_relative_path is not None and receipt.dest_relative_path != (
        dep.dest_relative_path
    ):
        return False
    if dep.sha256:
        # A size-only receipt cannot prove a file the catalog pins by hash.
        return receipt.sha256 is not None and receipt.sha256.lower() == dep.sha256.lower()
    if dep.expected_size_bytes is not None:
        return receipt.size_bytes == dep.expected_size_bytes
    return False  # nothing in the catalog to check it against


def _verified_at(receipt: Receipt) -> datetime | None:
    if receipt.verified_at_ms is None:
        return None
    try:
        return datetime.fromtimestamp(receipt.verified_at_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def store_receipt(
    instance_id: str,
    dep_id: str,
    item_id: str,
    receipt: Receipt,
    *,
    session: Session,
    now: datetime,
) -> bool:
    """Keep the receipt (replacing the previous one); True when it proves the dep installed.

    A proving receipt adds the inventory row if the instance had none, and clears
    the stored inventory digest: the next heartbeat then takes the full diff path
    (which keeps the row when the agent lists it, removes it when not), and every
    replica drops the heartbeat memos that were taken against the old digest.
    """
    dep = session.get(Dep, dep_id)
    matches = dep is not None and matches_catalog(receipt, dep)
    sha = receipt.sha256.lower() if receipt.sha256 else None
    values = {
        "instance_id": instance_id,
        "dep_id": dep_id,
        "algorithm": receipt.algorithm[:10],
        "sha256": sha if sha and SHA256_RE.match(sha) else None,
        "size_bytes": receipt.size_bytes,
        "mtime_ns": receipt.mtime_ns,
        "verified_at": _verified_at(receipt),
        "dest_relative_path": receipt.dest_relative_path,
        "final_path_verified": receipt.final_path_verified,
        "agent_version": (receipt.agent_version or "")[:100] or None,
        "item_id": item_id[:300],
        "matches_catalog": matches,
        "received_at": now,
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(DepReceipt).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["instance_id", "dep_id"],
            set_={k: statement.excluded[k] for k in values if k not in ("instance_id", "dep_id")},
        )
    )
    if not matches or dep is None:
        return False
    added = session.execute(
        insert(InstanceDep)
        .values(instance_id=instance_id, dep_id=dep_id, kind=dep.kind, since=now)
        .on_conflict_do_nothing(index_elements=["instance_id", "dep_id"])
        .returning(InstanceDep.dep_id)
    ).first()
    if added is not None:
        session.execute(
            update(Instance)
            .where(Instance.instance_id == instance_id)
            .values(inventory_digest=None)
        )
    return True


def receipts_of(instance_id: str, *, session: Session) -> list[DepReceipt]:
    """Every receipt kept for an instance, by dep id."""
    return list(
        session.scalars(
            select(DepReceipt)
            .where(DepReceipt.instance_id == instance_id)
            .order_by(DepReceipt.dep_id)
        )
    )
