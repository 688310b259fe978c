"""Dashboard sessions that were logged out: refused by every server process until they expire."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.store.models import RevokedSession


def session_digest(cookie: str) -> str:
    """What is stored of a revoked cookie: never the cookie itself."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def revoke(cookie: str, expires_epoch: int, *, session: Session) -> None:
    """Refuse `cookie` from now on; forget revocations that expired on their own."""
    now = utcnow()
    session.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))
    expires = datetime.fromtimestamp(expires_epoch, UTC)
    if session.get(RevokedSession, session_digest(cookie)) is None:
        session.add(RevokedSession(digest=session_digest(cookie), expires_at=expires))
    try:
        session.flush()
    except IntegrityError:  # revoked concurrently by another logout: done either way
        session.rollback()


def is_revoked(cookie: str, *, session: Session) -> bool:
    """Whether `cookie` was logged out."""
    digest = session_digest(cookie)
    return (
        session.scalar(select(RevokedSession.digest).where(RevokedSession.digest == digest))
        is not None
    )
