"""Logged-out dashboard sessions, by their random id: refused by every process until expiry."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.store.models import RevokedSession


def session_digest(session_id: str) -> str:
    """What is stored of a revoked session: never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def revoke(session_id: str, expires_epoch: int, *, session: Session) -> None:
    """Refuse the session `session_id` from now on; forget revocations that expired."""
    now = utcnow()
    session.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))
    expires = datetime.fromtimestamp(expires_epoch, UTC)
    if session.get(RevokedSession, session_digest(session_id)) is None:
        session.add(RevokedSession(digest=session_digest(session_id), expires_at=expires))
    try:
        session.flush()
    except IntegrityError:  # revoked concurrently by another logout: done either way
        session.rollback()


def is_revoked(session_id: str, *, session: Session) -> bool:
    """Whether the session `session_id` was logged out."""
    digest = session_digest(session_id)
    return (
        session.scalar(select(RevokedSession.digest).where(RevokedSession.digest == digest))
        is not None
    )
