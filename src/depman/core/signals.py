"""Wake-up marks a transaction leaves for after its commit (long-poll waiters, replicas).

Core functions only *mark* what changed on the session; the server installs an
`after_commit` hook that turns the marks into local asyncio wake-ups, and on
PostgreSQL `mark_*` also issues `pg_notify`, delivered to every replica on commit.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

NOTIFY_CHANNEL = "depman_wake"
INSTANCES_KEY = "depman_wake_instances"
JOBS_KEY = "depman_wake_jobs"
PENDING_KEY = "depman_pending_server_types"
PINS_KEY = "depman_pins_changed"


def _notify(session: Session, payload: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {
                "channel": NOTIFY_CHANNEL,
                "payload": payload,
            },
        )


def mark_instance(session: Session, instance_id: str) -> None:
    """Wake long-polls of `instance_id`'s queue once this transaction commits."""
    marks = session.info.setdefault(INSTANCES_KEY, set())
    if instance_id not in marks:
        marks.add(instance_id)
        _notify(session, "i:" + instance_id)


def mark_job(session: Session, job_id: str) -> None:
    """Wake readers waiting for a state change of `job_id` once this transaction commits."""
    marks = session.info.setdefault(JOBS_KEY, set())
    if job_id not in marks:
        marks.add(job_id)
        _notify(session, "j:" + job_id)


def mark_pins(session: Session, instance_id: str) -> None:
    """Drop every replica's cached pins of `instance_id` once this transaction commits."""
    marks = session.info.setdefault(PINS_KEY, set())
    if instance_id not in marks:
        marks.add(instance_id)
        _notify(session, "p:" + instance_id)


def mark_pending(session: Session, server_type: str) -> None:
    """Remember that a job of `server_type` waits for an instance."""
    session.info.setdefault(PENDING_KEY, set()).add(server_type)


def take_marks(session: Session) -> tuple[set[str], set[str], set[str], set[str]]:
    """Pop the marks of the finished transaction: (instances, jobs, pending types, pins)."""
    return (
        session.info.pop(INSTANCES_KEY, set()),
        session.info.pop(JOBS_KEY, set()),
        session.info.pop(PENDING_KEY, set()),
        session.info.pop(PINS_KEY, set()),
    )
