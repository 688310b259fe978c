"""The fleet mirror's ledger: which catalog files are stored in it, wanted, filling or failed.

One row per sha256 (`mirror_objects`). The fill worker (`depman.mirror.worker`)
takes due rows one at a time and records how each fill ended; the queue hands
out the mirror's copy of a dep only when its row is `stored`. No network here:
the bytes move in `depman.mirror`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Connection, bindparam, or_, select, update
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.store.models import Dep, MirrorObject

ERROR_MAX_CHARS = 500
# Longest wait between two tries of a failing fill.
MAX_RETRY_SECONDS = 3600.0


class MirrorState(StrEnum):
    """Life of one mirror object."""

    WANTED = "wanted"
    FILLING = "filling"
    STORED = "stored"
    FAILED = "failed"


@dataclass(frozen=True)
class FillRequest:
    """What `depman mirror fill` asked for one dep, and what the server made of it."""

    dep_id: str
    state: str | None
    reason: str = ""


def mirrorable(dep: Dep) -> bool:
    """A single-file entry with a sha256: the mirror names its bytes by it."""
    return bool(dep.sha256) and dep.files is None


def request_fills(
    dep_ids: Iterable[str] | None, *, session: Session, now: datetime | None = None
) -> list[FillRequest]:
    """Ask for the named deps (None: every catalog entry) to be filled now.

    A stored object stays as it is; a failed or backing-off one is due at once.
    """
    now = now or utcnow()
    wanted = None if dep_ids is None else list(dict.fromkeys(dep_ids))
    query = select(Dep).order_by(Dep.dep_id)
    if wanted is not None:
        query = query.where(Dep.dep_id.in_(wanted))
    deps = {dep.dep_id: dep for dep in session.scalars(query)}
    answers: list[FillRequest] = []
    for dep_id in wanted if wanted is not None else list(deps):
        dep = deps.get(dep_id)
        if dep is None:
            answers.append(FillRequest(dep_id, None, "no such dep"))
            continue
        if not mirrorable(dep):
            reason = "a folder model" if dep.files is not None else "no sha256 in the catalog"
            answers.append(FillRequest(dep_id, None, f"cannot be mirrored: {reason}"))
            continue
        row = _want(dep, session=session, now=now, again=True)
        answers.append(FillRequest(dep_id, row.state))
    return answers


def want_new_entries(*, session: Session, now: datetime | None = None) -> int:
    """Every mirrorable catalog entry not yet in the ledger becomes wanted (auto fill)."""
    now = now or utcnow()
    known = select(MirrorObject.sha256)
    deps = session.scalars(
        select(Dep)
        .where(Dep.sha256.is_not(None), Dep.sha256.not_in(known))
        .order_by(Dep.created_at, Dep.dep_id)
    ).all()
    added = 0
    for dep in deps:
        # `files` is JSON: a single file's is JSON null, which SQL IS NULL does not match.
        if mirrorable(dep) and session.get(MirrorObject, dep.sha256) is None:
            _want(dep, session=session, now=now, again=False)
            added += 1
    return added


def _want(dep: Dep, *, session: Session, now: datetime, again: bool) -> MirrorObject:
    assert dep.sha256 is not None
    row = session.get(MirrorObject, dep.sha256, with_for_update=True)
    if row is None:
        row = MirrorObject(
            sha256=dep.sha256,
            size_bytes=dep.expected_size_bytes,
            dep_id=dep.dep_id,
            state=MirrorState.WANTED.value,
            attempts=0,
            bytes_done=0,
            requested_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
    elif again and row.state == MirrorState.FAILED.value:
        row.state = MirrorState.WANTED.value
        row.next_attempt_at = None
        row.requested_at = now
        row.updated_at = now
    return row


def reset_interrupted(*, session: Session, now: datetime | None = None) -> int:
    """Fills left `filling` by a worker that died start again (called by the new worker)."""
    now = now or utcnow()
    result = session.execute(
        update(MirrorObject)
        .where(MirrorObject.state == MirrorState.FILLING.value)
        .values(state=MirrorState.WANTED.value, bytes_done=0, updated_at=now)
        .returning(MirrorObject.sha256)
    ).all()
    return len(result)


def take_next(*, session: Session, now: datetime | None = None) -> MirrorObject | None:
    """The oldest due object (wanted, or failed with its backoff over), now `filling`."""
    now = now or utcnow()
    row = session.scalars(
        select(MirrorObject)
        .where(
            or_(
                MirrorObject.state == MirrorState.WANTED.value,
                (MirrorObject.state == MirrorState.FAILED.value)
                & (MirrorObject.next_attempt_at <= now),
            )
        )
        .order_by(MirrorObject.requested_at, MirrorObject.sha256)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    row.state = MirrorState.FILLING.value
    row.started_at = now
    row.bytes_done = 0
    row.updated_at = now
    return row


def upstream_candidates(sha256: str, *, session: Session) -> list[Dep]:
    """The catalog entries holding these bytes (their URLs are the fill's upstreams)."""
    return list(
        session.scalars(select(Dep).where(Dep.sha256 == sha256).order_by(Dep.dep_id))
    )


def record_progress(sha256: str, bytes_done: int, *, session: Session) -> None:
    """How far the running fill has read (shown by `depman mirror status`)."""
    session.execute(
        update(MirrorObject)
        .where(MirrorObject.sha256 == sha256, MirrorObject.state == MirrorState.FILLING.value)
        .values(bytes_done=bytes_done, updated_at=utcnow())
    )


def record_stored(
    sha256: str, size: int, source_url: str | None, *, session: Session, now: datetime | None = None
) -> None:
    """The verified bytes are in the mirror."""
    now = now or utcnow()
    session.execute(
        update(MirrorObject)
        .where(MirrorObject.sha256 == sha256)
        .values(
            state=MirrorState.STORED.value,
            size_bytes=size,
            bytes_done=size,
            error=None,
            source_url=source_url,
            stored_at=now,
            next_attempt_at=None,
            updated_at=now,
        )
    )


def record_failed(
    sha256: str,
    error: str,
    *,
    retry_seconds: float,
    session: Session,
    now: datetime | None = None,
) -> datetime:
    """The fill failed: tried again after `retry_seconds`, doubling per failure in a row."""
    now = now or utcnow()
    row = session.get(MirrorObject, sha256, with_for_update=True)
    if row is None:
        return now
    row.attempts += 1
    wait = min(retry_seconds * 2 ** (row.attempts - 1), MAX_RETRY_SECONDS)
    row.state = MirrorState.FAILED.value
    row.error = error[:ERROR_MAX_CHARS]
    row.next_attempt_at = now + timedelta(seconds=wait)
    row.updated_at = now
    return row.next_attempt_at


def release_unfinished(sha256: str, *, session: Session) -> None:
    """A fill stopped by the server shutting down: due again for the next worker."""
    session.execute(
        update(MirrorObject)
        .where(MirrorObject.sha256 == sha256, MirrorObject.state == MirrorState.FILLING.value)
        .values(state=MirrorState.WANTED.value, bytes_done=0, updated_at=utcnow())
    )


@dataclass(frozen=True)
class MirrorEntry:
    """One catalog entry as the mirror sees it."""

    dep_id: str
    sha256: str | None
    size_bytes: int | None
    # stored, wanted, filling, failed; missing (not asked for); unmirrorable.
    state: str
    bytes_done: int = 0
    attempts: int = 0
    error: str | None = None
    next_attempt_at: datetime | None = None
    stored_at: datetime | None = None


def mirror_entries(
    *, session: Session, dep_ids: Iterable[str] | None = None
) -> list[MirrorEntry]:
    """Every catalog entry (or the named ones) and its mirror state."""
    query = (
        select(Dep, MirrorObject)
        .outerjoin(MirrorObject, MirrorObject.sha256 == Dep.sha256)
        .order_by(Dep.dep_id)
    )
    if dep_ids is not None:
        query = query.where(Dep.dep_id.in_(list(dep_ids)))
    entries: list[MirrorEntry] = []
    for dep, row in session.execute(query).all():
        if not mirrorable(dep):
            entries.append(
                MirrorEntry(dep.dep_id, dep.sha256, dep.expected_size_bytes, "unmirrorable")
            )
        elif row is None:
            entries.append(MirrorEntry(dep.dep_id, dep.sha256, dep.expected_size_bytes, "missing"))
        else:
            entries.append(
                MirrorEntry(
                    dep.dep_id,
                    dep.sha256,
                    row.size_bytes if row.size_bytes is not None else dep.expected_size_bytes,
                    row.state,
                    row.bytes_done,
                    row.attempts,
                    row.error,
                    row.next_attempt_at,
                    row.stored_at,
                )
            )
    return entries


_STORED_AT = select(MirrorObject.stored_at).where(
    MirrorObject.sha256 == bindparam("p_sha256"),
    MirrorObject.state == MirrorState.STORED.value,
)


def stored_before(sha256: str | None, moment: datetime | None, *, conn: Connection) -> bool:
    """Whether these bytes were stored in the mirror at `moment` (accounting's inference)."""
    if not sha256 or moment is None:
        return False
    stored_at = conn.execute(_STORED_AT, {"p_sha256": sha256}).scalar()
    return stored_at is not None and stored_at <= moment
