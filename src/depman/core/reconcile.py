"""Profile changes reach the instances already running, within one heartbeat.

Register hands an agent its profile once; a static dep added later would never
reach a running instance, and one removed would stay unevictable there. So a
change of a profile's static deps (or of a server type's profile):

- queues every added static dep (prefetch priority) on each registered instance
  of the affected server types that does not hold it, when the profile prefetches
  (as register does at boot);
- drops every replica's heartbeat memos of those instances, so the next heartbeat
  answer carries the new `staticDepIds`: a dep the agent holds as static but not
  listed there has become dynamic (evictable) on the agent.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from depman.core.queue import enqueue
from depman.core.states import PRIORITY_PREFETCH, Op
from depman.store.models import Instance, InstanceDep


def reconcile_static_deps(
    server_types: Collection[str], added: Collection[str], *, session: Session, now: datetime
) -> int:
    """Bring the instances of `server_types` up to their profile's static deps.

    `added`: the static deps to queue where missing (empty when the profile does
    not prefetch). Answers how many items were queued.
    """
    if not server_types:
        return 0
    instance_ids = list(
        session.scalars(
            select(Instance.instance_id).where(
                Instance.server_type.in_(list(server_types)),
                Instance.agent_token_hash.is_not(None),
                Instance.lost_at.is_(None),
            )
        )
    )
    if not added or not instance_ids:
        return 0
    held = set(
        session.execute(
            select(InstanceDep.instance_id, InstanceDep.dep_id).where(
                InstanceDep.instance_id.in_(instance_ids), InstanceDep.dep_id.in_(list(added))
            )
        ).tuples()
    )
    queued = 0
    for instance_id in instance_ids:
        for dep_id in added:
            if (instance_id, dep_id) not in held:
                enqueue(
                    instance_id,
                    dep_id,
                    Op.DOWNLOAD,
                    priority=PRIORITY_PREFETCH,
                    session=session,
                    now=now,
                )
                queued += 1
    return queued
