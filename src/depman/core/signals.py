"""Wake-up marks a transaction leaves for after its commit (long-poll waiters, replicas, memos).

Core functions only *mark* what changed on the session; the server installs an
`after_commit` hook that turns the marks into local asyncio wake-ups and drops the
replica's memos (`depman.core.hints`), and on PostgreSQL `mark_*` also issues
`pg_notify`, delivered to every replica on commit.

Payloads: `i:<instanceId>` items queued (wake its long-polls, drop its memos),
`p:<instanceId>` its row changed (pins, inventory, server type: drop its memos),
`t:<instanceId>` its agent token changed (drop the cached token hash),
`j:<jobId>` a job changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

NOTIFY_CHANNEL = "depman_wake"
MARKS_KEY = "depman_marks"


@dataclass
class Marks:
    """What one transaction changed, as far as wake-ups and memos care."""

    instances: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)


def _marks(session: Session) -> Marks:
    marks: Marks = session.info.setdefault(MARKS_KEY, Marks())
    return marks


def _notify(session: Session, payload: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {
                "channel": NOTIFY_CHANNEL,
                "payload": payload,
            },
        )


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


def mark_changed(session: Session, instance_id: str) -> None:
    """The instance's pins, inventory or server type changed: every replica drops its memos."""
    _mark(session, "p", instance_id, _marks(session).changed)


def mark_token(session: Session, instance_id: str) -> None:
    """The instance's agent token changed or is gone: every replica drops the cached hash."""
    _mark(session, "t", instance_id, _marks(session).tokens)


def mark_pending(session: Session, server_type: str) -> None:
    """Remember that a job of `server_type` waits for an instance."""
    _marks(session).pending.add(server_type)


def take_marks(session: Session) -> Marks:
    """Pop the marks of the finished transaction."""
    marks: Marks = session.info.pop(MARKS_KEY, None) or Marks()
    return marks
