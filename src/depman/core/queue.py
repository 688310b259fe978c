"""Per-instance queue items: generations, monotonic transitions, dispatch order, stale requeue.

One row per (instance, dep). Re-enqueueing a finished item starts a new generation,
and the agent's itemId `<depId>.<gen>` names it, so a late status for an old
generation is acknowledged and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from depman.core import dep_sources
from depman.core.chunks import chunks
from depman.core.clock import utcnow
from depman.core.mirror import MirrorState
from depman.core.states import OPEN_ITEM_STATES, ItemState, Op
from depman.core.upstream import Candidate, UpstreamGate, grant
from depman.store.models import Dep, Instance, MirrorObject, QueueItem, UtcDateTime

ERROR_MAX_CHARS = 500
# sha256 -> the URL an agent downloads the fleet mirror's copy from (presigned for a
# private bucket). The server passes it in; None: no mirror.
MirrorLink = Callable[[str], str]


def format_item_id(dep_id: str, generation: int) -> str:
    """The itemId the agent sees: `<depId>.<generation>`."""
    return f"{dep_id}.{generation}"


# Generations are 32-bit integers in the store.
MAX_GENERATION = 2**31 - 1


def parse_item_id(item_id: str) -> tuple[str, int] | None:
    """Split an itemId into (depId, generation); None when it is not one of ours.

    Only ASCII digits: `str.isdigit` also takes '²' or '①', which `int` refuses.
    """
    dep_id, sep, gen = item_id.rpartition(".")
    if not sep or not dep_id or not gen.isascii() or not gen.isdigit() or len(gen) > 10:
        return None
    generation = int(gen)
    return (dep_id, generation) if generation <= MAX_GENERATION else None


def _lock_item(instance_id: str, dep_id: str, *, session: Session) -> QueueItem | None:
    return session.scalar(
        select(QueueItem)
        .where(QueueItem.instance_id == instance_id, QueueItem.dep_id == dep_id)
        .with_for_update()
    )


@cache
def _insert_new_item(dialect: str) -> Any:
    """INSERT of a new item that does nothing when the instance has one of the dep."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(QueueItem)
        .on_conflict_do_nothing(index_elements=["instance_id", "dep_id"])
        .returning(QueueItem.id)
    )


def enqueue(
    instance_id: str,
    dep_id: str,
    op: Op,
    *,
    priority: int,
    session: Session,
    now: datetime | None = None,
) -> None:
    """Queue `op` for a dep on an instance; a queued or running download wins over a touch."""
    now = now or utcnow()
    # The session's pending rows go first, as they would through the session (a new
    # instance or dep the item refers to); inside `no_autoflush` they wait, as there.
    if session.autoflush:
        session.flush()
    conn = session.connection()
    # Insert first: most items are new, and then this is the only statement. The
    # parameters are named after their columns: the memos read the key from them.
    inserted = conn.execute(
        _insert_new_item(conn.dialect.name),
        {
            "instance_id": instance_id,
            "dep_id": dep_id,
            "generation": 1,
            "op": op.value,
            "state": ItemState.QUEUED.value,
            "priority": priority,
            "attempts": 0,
            "enqueued_at": now,
            "updated_at": now,
        },
    ).first()
    if inserted is not None:
        return
    row = _lock_item(instance_id, dep_id, session=session)
    assert row is not None  # the conflicting row; items are deleted only with the instance
    if row.state in OPEN_ITEM_STATES and _covers(row.op, op):
        # Same or weaker work already pending: only raise its priority.
        if priority < row.priority:
            row.priority = priority
            row.updated_at = now
        return
    row.op = op.value
    row.priority = priority
    start_generation(row, session=session, now=now)


def start_generation(row: QueueItem, *, session: Session, now: datetime) -> None:
    """Queue the item's work again as a new generation, clean of the last one's outcome."""
    row.generation += 1
    row.state = ItemState.QUEUED.value
    row.attempts = 0
    row.error = None
    row.enqueued_at = now
    row.started_at = None
    row.finished_at = None
    row.last_progress_at = None
    row.next_attempt_at = None
    row.first_failed_at = None
    row.cancel_reason = None
    row.force_retry = False
    row.force_retry_after_ms = None
    row.handed_out_at = None
    row.upstream_host = None
    row.waiting_upstream = None
    row.updated_at = now


def _covers(pending_op: str, op: Op) -> bool:
    """Whether pending work `pending_op` already does what `op` asks.

    A download covers a touch; a delete is never covered by, nor covers, a fetch.
    """
    if op == Op.DELETE or pending_op == Op.DELETE.value:
        return pending_op == op.value
    return pending_op == Op.DOWNLOAD.value or op == Op.TOUCH


@dataclass
class QueuePoll:
    """What `GET /dependencies/queue` answers: items in dispatch order and the pins."""

    found: bool
    items: list[dict[str, Any]] = field(default_factory=list)
    pinned_dep_ids: list[str] = field(default_factory=list)
    # Queued items left out because their upstream host is at its cap (core/upstream.py):
    # the answer is not "nothing queued", so it is neither memo'd nor long-polled on.
    waiting_upstream: int = 0


def folder_model_url(dep_id: str) -> str:
    """The `url` a folder model's items carry: a v1 agent, which cannot install a
    folder, fails it at its domain check ("Download domain not allowed") instead of
    writing one file where the folder belongs; depman's agent reads `files`."""
    return f"https://folder-model.invalid/{dep_id}"


def _poll_statement() -> Select[Any]:
    # Built once: the hot path only binds parameters (statement construction costs more
    # than the indexed query itself).
    sub = (
        select(
            QueueItem.instance_id,
            QueueItem.dep_id,
            QueueItem.generation,
            QueueItem.op,
            QueueItem.priority,
            QueueItem.enqueued_at,
            QueueItem.id,
            QueueItem.force_retry,
            QueueItem.force_retry_after_ms,
            QueueItem.upstream_host,
        )
        .where(
            QueueItem.instance_id == bindparam("p_instance_id"),
            QueueItem.state == ItemState.QUEUED.value,
            or_(
                QueueItem.next_attempt_at.is_(None),
                QueueItem.next_attempt_at <= bindparam("p_now", type_=UtcDateTime()),
            ),
        )
        .order_by(QueueItem.priority, QueueItem.enqueued_at, QueueItem.id)
        .limit(bindparam("p_limit", type_=Integer))
        .subquery()
    )
    return (
        select(
            Instance.pinned_dep_ids,
            sub.c.dep_id,
            sub.c.generation,
            sub.c.op,
            Dep.url,
            Dep.auth,
            Dep.dest_relative_path,
            Dep.sha256,
            Dep.expected_size_bytes,
            Dep.kind,
            Dep.root,
            Dep.files,
            Dep.sources,
            sub.c.force_retry,
            sub.c.force_retry_after_ms,
            MirrorObject.sha256.is_not(None).label("mirrored"),
            sub.c.id,
            sub.c.upstream_host,
        )
        .select_from(Instance)
        .outerjoin(sub, sub.c.instance_id == Instance.instance_id)
        .outerjoin(Dep, Dep.dep_id == sub.c.dep_id)
        .outerjoin(
            MirrorObject,
            and_(MirrorObject.sha256 == Dep.sha256, MirrorObject.state == MirrorState.STORED.value),
        )
        .where(Instance.instance_id == bindparam("p_instance_id"))
        .order_by(sub.c.priority, sub.c.enqueued_at, sub.c.id)
    )


POLL_STATEMENT = _poll_statement()


def resolved_document(
    dep_id: str,
    url: str,
    auth: str,
    dest: str,
    sha: str | None,
    size: int | None,
    kind: str,
    root: str | None,
    files: list[dict[str, Any]] | None,
    sources: list[dict[str, Any]] | None = None,
    *,
    mirrored: bool = False,
    mirror_link: MirrorLink | None = None,
) -> dict[str, Any]:
    """Where a dep comes from and where it goes, as the queue and the item check hand it out.

    A file stored in the fleet mirror (`mirrored`, with the server's `mirror_link`) is
    handed out from there: its URL, minted now (a presigned URL lives
    DEPMAN_MIRROR_PRESIGN_SECONDS from this moment), is `url`, which is all a field
    agent reads; depman's agent sees `mirror: true` and falls back to the upstream
    `url`, put first in `sources`. The mirror needs no token: `auth` becomes none,
    and the upstream's stays in `upstreamAuth`.
    """
    resolved: dict[str, Any] = {
        "url": url if files is None else folder_model_url(dep_id),
        "auth": auth,
        "destRelativePath": dest,
        "kind": kind,
    }
    if sha:
        resolved["sha256"] = sha
    if size is not None:
        resolved["expectedSizeBytes"] = size
    # depman extensions (v1 agents ignore unknown fields): the model root of
    # extra_model_paths.yaml to install into, and the files of a folder model.
    if root:
        resolved["root"] = root
    if files is not None:
        resolved["files"] = files
    # Further URLs for the same bytes, tried in order after `url` (depman agents).
    if sources and files is None:
        resolved["sources"] = dep_sources.urls_of(sources)
    if mirrored and mirror_link is not None and sha and files is None:
        resolved["sources"] = [resolved["url"], *resolved.get("sources", [])]
        resolved["url"] = mirror_link(sha)
        resolved["mirror"] = True
        if auth != "none":
            resolved["upstreamAuth"] = auth
            resolved["auth"] = "none"
    return resolved


def poll_queue(
    instance_id: str,
    limit: int,
    *,
    conn: Connection,
    now: datetime | None = None,
    mirror_link: MirrorLink | None = None,
    gate: UpstreamGate | None = None,
) -> QueuePoll:
    """The queued items of an instance, jobs' deps first then oldest first, in one query.

    An item whose `next_attempt_at` is still ahead is left out; `wake_due_items`
    wakes the instance's long-polls (and drops its empty-poll memos) when it is due.
    With upstream caps (`gate` active), a download whose host is at its cap is left
    out too and marked as waiting for it (core/upstream.py).
    """
    now = now or utcnow()
    params = {"p_instance_id": instance_id, "p_limit": limit, "p_now": now}
    rows = conn.execute(POLL_STATEMENT, params).all()
    if not rows:
        return QueuePoll(found=False)
    poll = QueuePoll(found=True, pinned_dep_ids=list(rows[0][0] or []))
    allowed: set[int] | None = None
    if gate is not None and gate.active:
        candidates = [
            Candidate(
                item_id=row.id,
                dep_id=row.dep_id,
                url=row.url,
                files=row.files,
                op=row.op,
                # Handed out from the fleet mirror (resolved_document's rule): not capped.
                mirrored=bool(row.mirrored and mirror_link is not None and row.sha256
                              and row.files is None),
                held_host=row.upstream_host,
            )
            for row in rows
            if row.dep_id is not None and row.url is not None
        ]
        allowed, waiting = grant(gate, instance_id, candidates, now=now)
        poll.waiting_upstream = len(waiting)
    for row in rows:
        (_pins, dep_id, gen, op, url, auth, dest, sha, size, kind, root, files, sources, force,
         after, mirrored, pk, _held_host) = row
        if dep_id is None or url is None:
            continue
        if allowed is not None and pk not in allowed:
            continue
        resolved = resolved_document(
            dep_id, url, auth, dest, sha, size, kind, root, files, sources,
            mirrored=bool(mirrored), mirror_link=mirror_link,
        )
        item: dict[str, Any] = {
            "itemId": format_item_id(dep_id, gen),
            "depId": dep_id,
            "op": op,
            "resolved": resolved,
        }
        if force:
            # Field agents 0.9.18+: retry now (or after N ms) despite a local backoff.
            item["forceRetry"] = True
            if after:
                item["forceRetryAfterMs"] = after
        poll.items.append(item)
    return poll


@dataclass(frozen=True)
class Transition:
    """The effect of one status report on its item (state and op as they now stand)."""

    applied: bool
    state: str | None = None
    op: str | None = None
    dep_id: str | None = None
    error: str | None = None
    reason: str = ""
    # Tell the agent to forget its local failure of the dep: the server queued it again.
    clear_failed: bool = False
    # What an applied transition leaves of the item for what follows in the same
    # report, so that nothing reads the row back: the upstream it holds a slot of,
    # and when the agent took it (started, else enqueued).
    upstream_host: str | None = None
    taken_at: datetime | None = None
    # The dep's catalog sha256 and size, as the transition read them (None: not read).
    dep_facts: tuple[str | None, int | None] | None = None


def _transition_statements(*, with_dep: bool) -> dict[str, Any]:
    # One UPDATE per reported state, whose WHERE holds the rule "within a generation,
    # states only move forward" (module docstring): a report the rule refuses matches
    # no row. Built once: the status path only binds parameters.
    now = bindparam("p_now", type_=UtcDateTime())
    queued, running = ItemState.QUEUED.value, ItemState.RUNNING.value
    succeeded, failed = ItemState.SUCCEEDED.value, ItemState.FAILED.value
    cancelled = ItemState.CANCELLED.value
    base = update(QueueItem).where(
        QueueItem.instance_id == bindparam("p_instance_id"),
        QueueItem.dep_id == bindparam("p_dep_id"),
        QueueItem.generation == bindparam("p_generation", type_=Integer),
    )
    # What the rest of a report needs of the item and its dep, so nothing reads them back.
    answer: tuple[Any, ...] = (
        QueueItem.state,
        QueueItem.op,
        QueueItem.dep_id,
        QueueItem.error,
        QueueItem.upstream_host,
        func.coalesce(QueueItem.started_at, QueueItem.enqueued_at).label("taken_at"),
    )
    if with_dep:
        of_dep = Dep.dep_id == QueueItem.dep_id
        answer += (
            select(Dep.sha256).where(of_dep).scalar_subquery().label("dep_sha256"),
            select(Dep.expected_size_bytes).where(of_dep).scalar_subquery().label("dep_size"),
        )
    return {
        running: base.where(QueueItem.state.in_((queued, running)))
        .values(
            state=running,
            started_at=case((QueueItem.state == queued, now), else_=QueueItem.started_at),
            last_progress_at=now,
            # The agent took it: a backoff is over, a forced retry done, no upstream wait.
            next_attempt_at=None,
            force_retry=False,
            waiting_upstream=None,
            updated_at=now,
        )
        .returning(*answer),
        # Accepted after `failed` too: the file did arrive. A `succeeded` report's error
        # text is a warning (ComfyUI does not list the file) kept on the item.
        succeeded: base.where(QueueItem.state != succeeded)
        .values(
            state=succeeded,
            error=bindparam("p_warning"),
            finished_at=now,
            updated_at=now,
            failures=0,
            next_attempt_at=None,
        )
        .returning(*answer),
        failed: base.where(QueueItem.state.in_((queued, running)))
        .values(state=failed, error=bindparam("p_error"), finished_at=now, updated_at=now)
        .returning(*answer),
        cancelled: base.where(QueueItem.state.in_((queued, running)))
        .values(state=cancelled, error=bindparam("p_error"), finished_at=now, updated_at=now)
        .returning(*answer),
    }


TRANSITIONS = _transition_statements(with_dep=False)
# PostgreSQL's also answer the dep's catalog facts. SQLite's cannot: SQLAlchemy writes
# the RETURNING columns there without their table, so a subquery on deps would compare
# deps.dep_id with itself.
TRANSITIONS_WITH_DEP = _transition_statements(with_dep=True)
_ITEM_NOW = select(QueueItem.state, QueueItem.generation, QueueItem.op).where(
    QueueItem.instance_id == bindparam("p_instance_id"),
    QueueItem.dep_id == bindparam("p_dep_id"),
)


def apply_item_state(
    instance_id: str,
    item_id: str,
    state: str,
    error: str | None,
    *,
    conn: Connection,
    now: datetime | None = None,
) -> Transition:
    """Move an item forward within its generation; stale or backward reports are ignored.

    One statement when the report applies (the common case), two when it does not.
    """
    parsed = parse_item_id(item_id)
    if parsed is None:
        return Transition(False, reason="unknown itemId")
    with_dep = conn.dialect.name == "postgresql"
    statement = (TRANSITIONS_WITH_DEP if with_dep else TRANSITIONS).get(state)
    if statement is None:
        return Transition(False, reason=f"unknown state {state}")
    dep_id, gen = parsed
    params = {
        "p_instance_id": instance_id,
        "p_dep_id": dep_id,
        "p_generation": gen,
        "p_now": now or utcnow(),
        "p_error": (error or "failed")[:ERROR_MAX_CHARS],
        "p_warning": f"warning: {error}"[:ERROR_MAX_CHARS] if error else None,
    }
    row = conn.execute(statement, params).first()
    if row is not None:
        return Transition(
            True,
            row.state,
            row.op,
            row.dep_id,
            row.error,
            upstream_host=row.upstream_host,
            taken_at=row.taken_at,
            dep_facts=(row.dep_sha256, row.dep_size) if with_dep else None,
        )
    current = conn.execute(_ITEM_NOW, params).first()
    if current is None:
        return Transition(False, reason="no such item")
    if current.generation != gen:
        return Transition(False, current.state, current.op, dep_id, reason="old generation")
    return Transition(
        False, current.state, current.op, dep_id, reason=f"{state} after {current.state}"
    )


def mark_downloads_progressing(
    instance_id: str, dep_ids: list[str], *, conn: Connection, now: datetime
) -> None:
    """Record that a heartbeat lists these deps as downloading (keeps running items alive)."""
    for part in chunks(dep_ids):
        conn.execute(
            update(QueueItem)
            .where(
                QueueItem.instance_id == instance_id,
                QueueItem.state == ItemState.RUNNING.value,
                QueueItem.dep_id.in_(part),
            )
            .values(last_progress_at=now)
        )


def succeed_held_downloads(
    instance_id: str, held: set[str], *, session: Session, now: datetime
) -> int:
    """Queued or running downloads of deps the inventory now holds become succeeded."""
    if not held:
        return 0
    rows = session.scalars(
        select(QueueItem).where(
            QueueItem.instance_id == instance_id,
            QueueItem.state.in_(OPEN_ITEM_STATES),
            QueueItem.op == Op.DOWNLOAD.value,
        )
    ).all()
    count = 0
    for row in rows:
        if row.dep_id in held:
            row.state = ItemState.SUCCEEDED.value
            row.finished_at = now
            row.updated_at = now
            row.error = None
            count += 1
    return count


def requeue_stale_running(
    *,
    session: Session,
    timeout_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
    listening_since: datetime | None = None,
) -> list[QueueItem]:
    """Running items no heartbeat listed as downloading for `timeout_seconds` go back to queued.

    Answers the items that reached `max_attempts` and were failed instead (and those an
    operator had cancelled, which end cancelled). `listening_since`: when this server
    process began to hear agents; before it has listened that long, no heartbeat could
    have listed anything, and nothing is stale.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    if listening_since is not None and listening_since > cutoff:
        return []
    last_sign = func.coalesce(
        QueueItem.last_progress_at, QueueItem.started_at, QueueItem.updated_at
    )
    rows = session.scalars(
        select(QueueItem)
        .where(and_(QueueItem.state == ItemState.RUNNING.value, last_sign < cutoff))
        .with_for_update(skip_locked=True)
    ).all()
    failed: list[QueueItem] = []
    for row in rows:
        row.attempts += 1
        row.updated_at = now
        if row.cancel_reason:
            # An operator cancelled it and the agent went quiet: it ends cancelled.
            row.state = ItemState.CANCELLED.value
            row.error = f"Dependency queue item cancelled: {row.cancel_reason}"[:ERROR_MAX_CHARS]
            row.finished_at = now
            failed.append(row)
        elif row.attempts >= max_attempts:
            row.state = ItemState.FAILED.value
            row.error = (
                f"no heartbeat listed it as downloading for {timeout_seconds:g}s "
                f"({row.attempts} attempts)"
            )
            row.finished_at = now
            failed.append(row)
        else:
            row.state = ItemState.QUEUED.value
            row.started_at = None
            row.last_progress_at = None
    return failed


def wake_due_items(*, session: Session, now: datetime | None = None) -> int:
    """Queued items whose `next_attempt_at` has come: clear it, wake their instances.

    A poll that found only such items was answered empty, and that answer is memo'd;
    writing the item drops the memo, so the next poll hands the item out. The write
    names its instances (looked up first): one that names none makes every memo of
    the fleet stale, at every sweep while downloads back off.
    """
    now = now or utcnow()
    due = (
        QueueItem.state == ItemState.QUEUED.value,
        QueueItem.next_attempt_at.is_not(None),
        QueueItem.next_attempt_at <= now,
    )
    instance_ids = list(session.scalars(select(QueueItem.instance_id).where(*due).distinct()))
    woken = 0
    for part in chunks(instance_ids):
        rows = session.execute(
            update(QueueItem)
            .where(QueueItem.instance_id.in_(part), *due)
            .values(next_attempt_at=None)
            .returning(QueueItem.id)
        ).all()
        woken += len(rows)
    return woken


def list_items(instance_id: str, *, session: Session) -> list[QueueItem]:
    """Every item of an instance's queue, dispatch order for open ones, then by dep."""
    return list(
        session.scalars(
            select(QueueItem)
            .where(QueueItem.instance_id == instance_id)
            .order_by(QueueItem.priority, QueueItem.enqueued_at, QueueItem.id)
        )
    )


def count_by_state(*, session: Session) -> dict[str, int]:
    """Queue items per state (for metrics)."""
    rows = session.execute(select(QueueItem.state, func.count()).group_by(QueueItem.state))
    return {state: count for state, count in rows}
