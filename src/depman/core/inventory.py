"""Heartbeats: the inventory as rows, applied as a diff; an unchanged one is one small UPDATE."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from depman.core.chunks import chunks
from depman.core.clock import utcnow
from depman.core.jobs import refresh_instance_jobs
from depman.core.policy import Policy
from depman.core.queue import enqueue, mark_downloads_progressing, succeed_held_downloads
from depman.core.states import PRIORITY_PREFETCH, ItemState, Op
from depman.errors import NotFound
from depman.store.models import (
    Instance,
    InstanceDep,
    Profile,
    ProfileStaticDep,
    QueueItem,
    ServerType,
    UtcDateTime,
)
from depman.store.writes import declare_writes


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat body, snake_cased."""

    installed_static: list[str] = field(default_factory=list)
    installed_dynamic: list[str] = field(default_factory=list)
    downloading: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_used_bytes: int | None = None
    dynamic_bytes_used: int | None = None
    queue_depth: int | None = None
    active_downloads: list[dict[str, Any]] = field(default_factory=list)
    # Telemetry of later field agents (0.9.16+); None keeps what is stored.
    disk_stats_path: str | None = None
    disk_diagnostics: dict[str, Any] | None = None


@dataclass(frozen=True)
class HeartbeatResult:
    """What the caller needs after a heartbeat: pins to answer, and whether to place jobs."""

    pinned_dep_ids: list[str]
    changed: bool
    became_live: bool
    server_type: str
    digest: str
    agent_version: str | None = None  # as registered: decides the agentUpdate offer


def inventory(hb: Heartbeat) -> dict[str, str]:
    """dep id → kind of what the heartbeat lists as installed (static wins over dynamic)."""
    held = {dep_id: "dynamic" for dep_id in hb.installed_dynamic}
    held.update({dep_id: "static" for dep_id in hb.installed_static})
    return held


def inventory_digest(held: dict[str, str]) -> str:
    """A digest of the installed lists, to skip the diff when nothing changed."""
    text = "\n".join(f"{kind}:{dep_id}" for dep_id, kind in sorted(held.items()))
    return hashlib.sha256(text.encode()).hexdigest()


SCALAR_COLUMNS = (
    "disk_total_bytes",
    "disk_free_bytes",
    "disk_used_bytes",
    "dynamic_bytes_used",
    "queue_depth",
)


def _unchanged_live_row() -> Any:
    # The UPDATE … RETURNING of both statements below: the row of a live instance whose
    # stored inventory is the heartbeat's.
    return (
        update(Instance)
        .where(
            Instance.instance_id == bindparam("p_instance_id"),
            Instance.inventory_digest == bindparam("p_digest"),
            Instance.last_heartbeat_at >= bindparam("p_cutoff", type_=UtcDateTime()),
        )
        .returning(Instance.pinned_dep_ids, Instance.server_type, Instance.agent_version)
    )


def _fast_update() -> Any:
    # Built once; optional scalars keep their stored value when the heartbeat omits them.
    keep = {
        name: func.coalesce(bindparam(f"p_{name}", type_=BigInteger), getattr(Instance, name))
        for name in SCALAR_COLUMNS
    }
    return _unchanged_live_row().values(
        last_heartbeat_at=bindparam("p_now", type_=UtcDateTime()),
        downloading_dep_ids=bindparam("p_downloading", type_=JSON()),
        failed_dep_ids=bindparam("p_failed", type_=JSON()),
        active_downloads=bindparam("p_active", type_=JSON()),
        disk_stats_path=func.coalesce(
            bindparam("p_disk_path", type_=Text()), Instance.disk_stats_path
        ),
        disk_diagnostics=func.coalesce(
            bindparam("p_disk_diag", type_=JSON(none_as_null=True)),
            Instance.disk_diagnostics,
            type_=JSON(),
        ),
        **keep,
    )


FAST_UPDATE = _fast_update()


def _same(column: Any, param: str, type_: Any) -> Any:
    # A JSON value as text: the row's was written through the same serializer.
    return cast(column, Text) == cast(bindparam(param, type_=type_), Text)


def _kept_or_same(column: Any, param: str, type_: Any, *, as_text: bool = False) -> Any:
    # A value the heartbeat may omit (None keeps the stored one, as FAST_UPDATE does).
    value = bindparam(param, type_=type_)
    same = _same(column, param, type_) if as_text else column == value
    return or_(value.is_(None), same)


def _restatement() -> Any:
    # FAST_UPDATE's row, when every value it would write equals the stored one. Such a
    # beat writes only the liveness time, which no memo reads: other replicas keep
    # their heartbeat memos (a write of the other columns drops them).
    return (
        _unchanged_live_row()
        .where(
            _same(Instance.downloading_dep_ids, "p_downloading", JSON()),
            _same(Instance.failed_dep_ids, "p_failed", JSON()),
            _same(Instance.active_downloads, "p_active", JSON()),
            _kept_or_same(Instance.disk_stats_path, "p_disk_path", Text()),
            _kept_or_same(
                Instance.disk_diagnostics, "p_disk_diag", JSON(none_as_null=True), as_text=True
            ),
            *(
                _kept_or_same(getattr(Instance, name), f"p_{name}", BigInteger())
                for name in SCALAR_COLUMNS
            ),
        )
        .values(last_heartbeat_at=bindparam("p_now", type_=UtcDateTime()))
    )


RESTATEMENT = _restatement()


ADD_ROWS_PG = declare_writes(
    text(
        "INSERT INTO instance_deps (instance_id, dep_id, kind, since) "
        "SELECT :p_instance_id, d, k, :p_now "
        "FROM unnest(CAST(:p_deps AS varchar[]), CAST(:p_kinds AS varchar[])) AS t(d, k)"
    ).bindparams(bindparam("p_now", type_=UtcDateTime())),
    key_param="p_instance_id",
)


def _scalars(hb: Heartbeat, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "last_heartbeat_at": now,
        "downloading_dep_ids": list(hb.downloading),
        "failed_dep_ids": list(hb.failed),
        "active_downloads": list(hb.active_downloads),
    }
    if hb.disk_stats_path is not None:
        values["disk_stats_path"] = hb.disk_stats_path
    if hb.disk_diagnostics is not None:
        values["disk_diagnostics"] = hb.disk_diagnostics
    for name in SCALAR_COLUMNS:
        value = getattr(hb, name)
        if value is not None:
            values[name] = value
    return values


@dataclass(frozen=True)
class UnchangedBeat:
    """A heartbeat the stored row took as unchanged: the pins to answer."""

    pinned_dep_ids: list[str]
    server_type: str
    digest: str
    agent_version: str | None = None


def record_unchanged_heartbeat(
    instance_id: str,
    hb: Heartbeat,
    *,
    conn: Connection,
    policy: Policy,
    now: datetime | None = None,
    digest: str | None = None,
) -> UnchangedBeat | None:
    """Write a heartbeat whose inventory the row already holds, of a live instance.

    One UPDATE … RETURNING (plus one for the running items it lists as downloading):
    of the liveness time alone when the heartbeat restates what the row holds, else of
    every column it carries (a second UPDATE). None, with nothing written, when the
    inventory differs or the instance was not live: `apply_heartbeat` does the rest.
    """
    now = now or utcnow()
    digest = digest or inventory_digest(inventory(hb))
    params: dict[str, Any] = {
        "p_instance_id": instance_id,
        "p_digest": digest,
        "p_cutoff": now - timedelta(seconds=policy.live_ttl_seconds),
        "p_now": now,
        "p_downloading": list(hb.downloading),
        "p_failed": list(hb.failed),
        "p_active": list(hb.active_downloads),
        "p_disk_path": hb.disk_stats_path,
        "p_disk_diag": hb.disk_diagnostics,
    }
    params.update({f"p_{name}": getattr(hb, name) for name in SCALAR_COLUMNS})
    row = conn.execute(RESTATEMENT, params).first() or conn.execute(FAST_UPDATE, params).first()
    if row is None:
        return None
    # Instance row first, queue rows second: the same lock order as status reports.
    mark_downloads_progressing(instance_id, hb.downloading, conn=conn, now=now)
    return UnchangedBeat(list(row[0] or []), row[1], digest, row[2])


def apply_heartbeat(
    instance_id: str,
    hb: Heartbeat,
    *,
    session: Session,
    policy: Policy,
    now: datetime | None = None,
) -> HeartbeatResult:
    """Record a heartbeat: scalars always; the inventory rows only when the digest changed."""
    now = now or utcnow()
    held = inventory(hb)
    digest = inventory_digest(held)
    # Fast path: same inventory and already live → one UPDATE … RETURNING.
    fast = record_unchanged_heartbeat(
        instance_id, hb, conn=session.connection(), policy=policy, now=now, digest=digest
    )
    if fast is not None:
        return HeartbeatResult(
            fast.pinned_dep_ids, False, False, fast.server_type, digest, fast.agent_version
        )
    cutoff = now - timedelta(seconds=policy.live_ttl_seconds)
    row = session.scalar(
        select(Instance).where(Instance.instance_id == instance_id).with_for_update()
    )
    if row is None:
        raise NotFound(f"instance {instance_id!r} does not exist")
    mark_downloads_progressing(instance_id, hb.downloading, conn=session.connection(), now=now)
    was_live = (
        row.last_heartbeat_at is not None
        and row.last_heartbeat_at >= cutoff
        and (row.registered_at is None or row.last_heartbeat_at >= row.registered_at)
    )
    changed = row.inventory_digest != digest
    for key, value in _scalars(hb, now).items():
        setattr(row, key, value)
    if changed:
        row.inventory_digest = digest  # set before the diff's first query flushes the row
        _apply_diff(instance_id, held, session=session, now=now)
        held_ids = set(held)
        succeed_held_downloads(instance_id, held_ids, session=session, now=now)
        refresh_instance_jobs(instance_id, held_ids, session=session, now=now)
        restore_static_deps(instance_id, row.server_type, held_ids, session=session, now=now)
    session.flush()
    # Pins are as loaded: the row is locked, and nothing above changes a job's activity.
    return HeartbeatResult(
        list(row.pinned_dep_ids or []),
        changed,
        not was_live,
        row.server_type,
        digest,
        row.agent_version,
    )


def _apply_diff(instance_id: str, held: dict[str, str], *, session: Session, now: datetime) -> None:
    current = dict(
        session.execute(
            select(InstanceDep.dep_id, InstanceDep.kind).where(
                InstanceDep.instance_id == instance_id
            )
        ).all()
    )
    gone = [dep_id for dep_id in current if dep_id not in held]
    rekind = {
        dep_id: kind
        for dep_id, kind in held.items()
        if dep_id in current and current[dep_id] != kind
    }
    for part in chunks(gone):
        session.execute(
            delete(InstanceDep).where(
                InstanceDep.instance_id == instance_id, InstanceDep.dep_id.in_(part)
            )
        )
    for dep_id, kind in rekind.items():
        session.execute(
            update(InstanceDep)
            .where(InstanceDep.instance_id == instance_id, InstanceDep.dep_id == dep_id)
            .values(kind=kind)
        )
    added = [
        {"instance_id": instance_id, "dep_id": dep_id, "kind": kind, "since": now}
        for dep_id, kind in held.items()
        if dep_id not in current
    ]
    if added and session.get_bind().dialect.name == "postgresql":
        # One statement with arrays: psycopg's executemany is a pipeline of 200 statements,
        # 17 ms of CPU per first heartbeat, which capped a 10,000-agent boot.
        session.connection().execute(
            ADD_ROWS_PG,
            {
                "p_instance_id": instance_id,
                "p_deps": [row["dep_id"] for row in added],
                "p_kinds": [row["kind"] for row in added],
                "p_now": now,
            },
        )
    elif added:
        # One executemany through Core: a first heartbeat lists hundreds of deps.
        session.connection().execute(insert(InstanceDep), added)
    session.flush()


def restore_static_deps(
    instance_id: str, server_type: str, held: set[str], *, session: Session, now: datetime
) -> list[str]:
    """Queue again the prefetch of static deps that were installed and are now gone.

    Register checks the boot prefetch against the inventory of the last heartbeat
    before a restart; a static file lost while the agent was down only shows in the
    next heartbeat, so that is where it is queued again. Items that failed stay
    failed (no retry storm on every inventory change).
    """
    static = (
        session.execute(
            select(ProfileStaticDep.dep_id)
            .join(Profile, Profile.profile_id == ProfileStaticDep.profile_id)
            .join(ServerType, ServerType.profile_id == Profile.profile_id)
            .where(ServerType.server_type == server_type, Profile.prefetch_on_boot.is_(True))
        )
        .scalars()
        .all()
    )
    missing = [dep_id for dep_id in static if dep_id not in held]
    if not missing:
        return []
    items = {
        dep_id: (state, op)
        for dep_id, state, op in session.execute(
            select(QueueItem.dep_id, QueueItem.state, QueueItem.op).where(
                QueueItem.instance_id == instance_id, QueueItem.dep_id.in_(missing)
            )
        )
    }
    # An operator's delete (forced, for a static dep) is not undone here: the file
    # comes back with the next register's prefetch or an operator's retry.
    done = (ItemState.SUCCEEDED.value, Op.DOWNLOAD.value)
    queued = [
        d
        for d in missing
        if items.get(d, done)[0] == ItemState.SUCCEEDED.value
        and items.get(d, done)[1] != Op.DELETE.value
    ]
    for dep_id in queued:
        enqueue(
            instance_id, dep_id, Op.DOWNLOAD, priority=PRIORITY_PREFETCH, session=session, now=now
        )
    return queued


def held_by_instances(instance_ids: list[str], *, session: Session) -> dict[str, dict[str, str]]:
    """dep id → kind held by each instance (one query)."""
    result: dict[str, dict[str, str]] = {iid: {} for iid in instance_ids}
    if not instance_ids:
        return result
    stmt = select(InstanceDep.instance_id, InstanceDep.dep_id, InstanceDep.kind)
    if len(instance_ids) <= 500:
        stmt = stmt.where(InstanceDep.instance_id.in_(instance_ids))
    for instance_id, dep_id, kind in session.execute(stmt.order_by(InstanceDep.dep_id)):
        if instance_id in result:
            result[instance_id][dep_id] = kind
    return result
