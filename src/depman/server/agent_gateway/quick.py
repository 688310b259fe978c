"""The quick stage: what the memos cannot answer but one or two Core statements can.

At 10,000 agents every job brings about ten agent requests the memos cannot
answer: the poll that finds its items, the `running` reports, the heartbeats
after its pins changed. In a session each costs more CPU than the statements
themselves. Here each runs in a worker thread on a quick connection
(`Database.quick`: on PostgreSQL, autocommit with asynchronous commit), only
where every statement stands alone and losing the last ones in a crash is
harmless (the agent repeats the report, or its next heartbeat restates it).

A function answers None for what it does not take, and the full stage
(`full.py`) answers instead:

- a poll of an instance that does not exist (the full stage answers 404);
- a heartbeat whose inventory changed, or of an instance that was not live (the
  full stage applies the diff, places pending jobs, marks new jobs ready);
- any report but `running`: a `succeeded` one may prove a dep installed and make
  jobs ready, a `failed` one re-places the jobs waiting for the dep, each in one
  transaction with its item.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

from depman.core.clock import utcnow
from depman.core.inventory import record_unchanged_heartbeat
from depman.core.profiles import static_dep_ids_of_type
from depman.core.queue import QueuePoll, poll_queue
from depman.core.reports import record_report
from depman.core.states import ItemState
from depman.server.agent_gateway.answers import (
    heartbeat_answer,
    poll_answer,
    status_answer,
)
from depman.server.agent_gateway.memo import remember_heartbeat
from depman.server.agent_updates import update_offer
from depman.server.schemas.agent import HeartbeatRequest, StatusRequest
from depman.server.state import ServerState


@dataclass(frozen=True, slots=True)
class PollRead:
    """A poll's answer, and whether it hands out items (a long-poll waits when it does not)."""

    body: bytes
    has_items: bool


def poll_read(
    state: ServerState, instance_id: str, poll: QueuePoll, seen: tuple[int, int]
) -> PollRead:
    """The answer of a poll; an empty one is memo'd unless items wait for their upstream.

    A long-poll with items waiting for their upstream waits like an empty one: a slot
    coming free wakes it (`core.upstream.wake_waiters`), else the lease or its time ends.
    """
    answer = poll_answer(poll)
    if not poll.items and not poll.waiting_upstream:
        state.cache.memos.remember_empty(instance_id, answer, seen)
    return PollRead(answer, bool(poll.items))


def quick_poll(state: ServerState, instance_id: str, limit: int) -> PollRead | None:
    """The queue of an instance, read on a quick connection; memo'd when empty."""
    hints = state.cache.memos
    seen = hints.epoch(instance_id)  # before the read the memo relies on
    with state.db.quick(write=False) as conn:
        poll = poll_queue(
            instance_id, limit, conn=conn, mirror_link=state.mirror_link, gate=state.upstream
        )
    if not poll.found:
        return None
    return poll_read(state, instance_id, poll, seen)


def quick_heartbeat(state: ServerState, body: HeartbeatRequest, scope: Scope) -> bytes | None:
    """A heartbeat whose inventory the row already holds, of a live instance; memo'd when quiet."""
    seen = state.cache.memos.epoch(body.instance_id)
    hb = body.to_core()
    with state.db.quick(write=True) as conn:
        beat = record_unchanged_heartbeat(body.instance_id, hb, conn=conn, policy=state.policy)
        if beat is None:
            return None
        # Read after the write, before the memo: a profile change since drops the memo.
        static = static_dep_ids_of_type(beat.server_type, conn=conn)
        update = update_offer(
            state,
            scope,
            instance_id=body.instance_id,
            server_type=beat.server_type,
            agent_version=beat.agent_version,
            conn=conn,
        )
    answer = heartbeat_answer(beat.pinned_dep_ids, static, update)
    remember_heartbeat(state, body, hb, beat.digest, answer, seen)
    return answer


def quick_status(state: ServerState, body: StatusRequest) -> bytes | None:
    """A `running` report: the item moves (or not) and the disk figures are kept, each in
    one statement."""
    if body.state != ItemState.RUNNING.value:
        return None
    with state.db.quick(write=True) as conn:
        result = record_report(body.instance_id, body.to_core(), conn=conn, now=utcnow())
    return status_answer(result)
