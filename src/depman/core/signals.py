"""Wake-up marks a transaction leaves for after its commit (long-poll waiters, replicas, memos).

Core functions only *mark* what changed on the session; the server installs an
`after_commit` hook that turns the marks into local asyncio wake-ups and drops the
replica's memos (`depman.core.hints`), and on PostgreSQL sends the marks to every
other replica with `pg_notify`.

Payloads: `i:<instanceId>` items queued (wake its long-polls, drop its memos),
`p:<instanceId>` its row changed (pins, inventory, server type: drop its memos),
`t:<instanceId>` its agent token changed (drop the cached token hash),
`j:<jobId>` a job changed, `u:` an agent build was published or unpublished (re-read
the builds, drop every heartbeat memo: they hold `agentUpdate`), `x:` drop every
memo (a replica started: whatever its previous run committed and did not get to
announce). Each is prefixed with
`<origin>/`, the sending process, which skips its own: the commit hook has already
applied them, and an echo landing after a handler refreshed a memo would drop the
fresh memo again.

The NOTIFY is sent right after the commit, in a transaction of its own on an
autocommit connection with asynchronous commit (`notify_statement`), not inside the
committing transaction. PostgreSQL serializes the commits of notifying
transactions on one lock held through their WAL flush; inside the job
transactions, that lock queued every job transition of the fleet behind one slow
fsync (100-190 ms waits at 10,000 agents, issue 5). The price is a window between
commit and NOTIFY: a process that dies in it leaves other replicas' memos stale
until its successor's `x:` or the memo TTL (`depman.core.hints.HINT_SECONDS`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

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
    builds: bool = False
    payloads: list[str] = field(default_factory=list)  # for the other replicas, after commit


def _marks(session: Session) -> Marks:
    marks: Marks = session.info.setdefault(MARKS_KEY, Marks())
    return marks


def _notify(session: Session, payload: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        _marks(session).payloads.append(f"{ORIGIN}/{payload}")


def notify_statement(payloads: list[str]) -> tuple[Any, dict[str, Any]]:
    """The one statement that sends `payloads` on the wake-up channel, and its parameters."""
    return _NOTIFY_ALL, {"channel": NOTIFY_CHANNEL, "payloads": payloads}


def forget_all_payload() -> str:
    """The payload that makes every other replica drop all its memos."""
    return f"{ORIGIN}/x:"


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


def mark_builds(session: Session) -> None:
    """An agent build was published or unpublished: every replica re-reads them."""
    marks = _marks(session)
    if not marks.builds:
        marks.builds = True
        _notify(session, "u:")


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
