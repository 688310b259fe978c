"""Pins: the deps of an instance's waiting, ready and running jobs, which its agent never evicts."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from depman.core.signals import mark_changed
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


def refresh_pins(instance_id: str | None, *, session: Session) -> list[str]:
    """Store the current pins on the instance row (read by heartbeat and queue answers)."""
    if instance_id is None:
        return []
    session.flush()
    pins = compute_pins(instance_id, session=session)
    session.execute(
        update(Instance).where(Instance.instance_id == instance_id).values(pinned_dep_ids=pins)
    )
    mark_changed(session, instance_id)
    return pins
