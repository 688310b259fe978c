"""Pins: the deps of an instance's waiting, ready and running jobs, which its agent never evicts."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from depman.core.states import ACTIVE_JOB_STATES
from depman.store.models import Instance, Job, JobDep


def compute_pins(instance_id: str, *, session: Session) -> list[str]:
    """The union of the deps of the active jobs on an instance, sorted."""
    rows = session.scalars(
        select(JobDep.dep_id)
        .join(Job, Job.job_id == JobDep.job_id)
        .where(Job.instance_id == instance_id, Job.state.in_(ACTIVE_JOB_STATES))
        .distinct()
    )
    return sorted(rows)


def _store(instance_id: str, pins: list[str], current: list[str], *, session: Session) -> None:
    # An unchanged set is not written: every write drops the instance's memos.
    if pins != current:
        session.connection().execute(
            update(Instance).where(Instance.instance_id == instance_id).values(pinned_dep_ids=pins)
        )


def refresh_pins(instance_id: str | None, *, session: Session) -> list[str]:
    """Store the current pins on the instance row (read by heartbeat and queue answers).

    The row is locked before the jobs are read, so a placement on the instance
    (which adds its job's deps under the same lock, `add_pins`) is never overwritten
    by a set computed without it.
    """
    if instance_id is None:
        return []
    session.flush()  # the caller's job changes count
    stored = session.connection().execute(
        select(Instance.pinned_dep_ids).where(Instance.instance_id == instance_id).with_for_update()
    ).first()
    if stored is None:
        return []
    pins = compute_pins(instance_id, session=session)
    _store(instance_id, pins, list(stored[0] or []), session=session)
    return pins


def add_pins(
    instance_id: str, current: list[str], dep_ids: Iterable[str], *, session: Session
) -> list[str]:
    """A job was placed on an instance whose row the caller holds locked: pin its deps too.

    `current` is the row's pins as read under that lock.
    """
    pins = sorted(set(current).union(dep_ids))
    _store(instance_id, pins, current, session=session)
    return pins
