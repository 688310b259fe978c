"""Wake-up marks a transaction leaves for after its commit (long-poll waiters, replicas, memos).

Core functions only *mark* what changed on the session; the server installs an
`after_commit` hook that turns the marks into local asyncio wake-ups and drops the
replica's memos (`depman.core.hints`), and on PostgreSQL `mark_*` also issues
`pg_notify`, delivered to every replica on commit.

Payloads: `i:<instanceId>` items queued (wake its long-polls, drop its memos),
`p:<instanceId>` its row changed (pins, inventory, server type: drop its memos),
`t:<instanceId>` its agent token changed (drop the cached token hash),
`j:<jobId>` a job changed. Each is prefixed with `<origin>/`, the sending process,
which skips its own: the commit hook has already applied them, and an echo landing
after a handler refreshed a memo would drop the fresh memo again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

NOTIFY_CHANNEL = "depman_wake"
MARKS_KEY = "depman_marks"
# This process, as the sender of its notifications.
ORIGIN = secrets.token_hex(6)
_NOTIFY_ALL = text(
    "SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS t(p)"
)


@dataclass
class Marks:
    """What one transaction changed, as far as wake-ups and memos care."""

    instances: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    changed_elsewhere: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    payloads: list[str] = field(default_factory=list)  # NOTIFYs not yet sent


def _marks(session: Session) -> Marks:
    marks: Marks = session.info.setdefault(MARKS_KEY, Marks())
    return marks


def _notify(session: Session, payload: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        _marks(session).payloads.append(f"{ORIGIN}/{payload}")


def send_notifications(session: Session) -> None:
    """Issue the transaction's NOTIFYs in one statement; run just before it commits.

    PostgreSQL delivers them at commit either way; one round trip instead of one per
    mark (a register made four).
    """
    marks: Marks | None = session.info.get(MARKS_KEY)
    if marks is None or not marks.payloads:
        return
    payloads, marks.payloads = marks.payloads, []
    session.execute(_NOTIFY_ALL, {"channel": NOTIFY_CHANNEL, "payloads": payloads})


def install_notify_hook(factory: sessionmaker[Session]) -> None:
    """Send each transaction's notifications from sessions of `factory`."""
    event.listen(factory, "before_commit", send_notifications)


def _mark(session: Session, kind: str, key: str, seen: set[str]) -> None:
    if key not in seen:
        seen.add(key)
        _notify(session, f"{kind}:{key}")


def mark_instance(session: Session, instance_id: str) -> None:
    """Wake long-polls of `instance_id`'s queue once this transaction commits."""
    _mark(session, "i", instance_id, _marks(session).instances)


def mark_job(session: Session, job_id: str) -> None:
    """Wake readers waiting for a state change of `job_id` once this transaction commits."""
    _mark(session, "j", job_id, _marks(session).jobs)


def mark_changed(session: Session, instance_id: str, *, here: bool = True) -> None:
    """The instance's pins, inventory or server type changed: every replica drops its memos.

    `here=False`: only the other replicas; the caller refreshes this process's memo itself.
    """
    marks = _marks(session)
    if here:
        _mark(session, "p", instance_id, marks.changed)
    else:
        _mark(session, "p", instance_id, marks.changed_elsewhere)


def mark_token(session: Session, instance_id: str) -> None:
    """The instance's agent token changed or is gone: every replica drops the cached hash."""
    _mark(session, "t", instance_id, _marks(session).tokens)


def mark_pending(session: Session, server_type: str) -> None:
    """Remember that a job of `server_type` waits for an instance."""
    _marks(session).pending.add(server_type)


def split_origin(payload: str) -> tuple[str | None, str]:
    """(sending process or None, the rest) of a NOTIFY payload."""
    origin, sep, rest = payload.partition("/")
    return (origin, rest) if sep else (None, payload)


def take_marks(session: Session) -> Marks:
    """Pop the marks of the finished transaction."""
    marks: Marks = session.info.pop(MARKS_KEY, None) or Marks()
    return marks
