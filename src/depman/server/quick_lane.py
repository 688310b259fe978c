"""Agent requests the memos cannot answer but one or two Core statements can.

At 10,000 agents every job brings about ten agent requests the memos cannot answer:
the poll that finds its items, the `running` and `succeeded` reports, the heartbeats
after its pins changed (issue 5). Through FastAPI and an ORM session each cost
3-5 ms of CPU on a 2-core machine, more than the statements themselves. The fast
lane (`server/fastlane.py`) hands them here instead, once the bearer token matched
the memo'd hash; each function runs in a worker thread on a quick connection
(`Database.quick`: on PostgreSQL, autocommit with asynchronous commit) and answers
the same bytes as the handler. A function answers None for what it does not take;
the request then goes to FastAPI unchanged:

- a poll of an instance that does not exist (the handler answers 404);
- a heartbeat whose inventory changed, or of an instance that was not live (the
  handler applies the diff, places pending jobs, marks new jobs ready);
- a `failed` report (the handler re-places or fails the jobs waiting for the dep,
  in one transaction with the item).

A `succeeded` report is taken here but applied by `apply_status` in a session,
exactly as the handler does (receipt, inventory row, jobs going ready).
"""

from __future__ import annotations

from starlette.types import Scope

from depman.core.clock import utcnow
from depman.core.inventory import record_unchanged_heartbeat
from depman.core.profiles import static_dep_ids_of_type
from depman.core.queue import poll_queue
from depman.core.reports import FIGURES, apply_status, record_report
from depman.core.states import ItemState
from depman.server.agent_answers import heartbeat_answer, poll_answer, status_answer
from depman.server.agent_updates import update_offer
from depman.server.memo_answers import remember_heartbeat
from depman.server.schemas.agent import HeartbeatRequest, StatusRequest
from depman.server.state import ServerState

# Reports that only move their item: `failed` also re-places jobs (the handler's work).
QUICK_REPORT_STATES = (ItemState.RUNNING.value, ItemState.SUCCEEDED.value)


def quick_poll(state: ServerState, instance_id: str, limit: int) -> bytes | None:
    """The queue of an instance, read on a quick connection; memo'd when empty."""
    hints = state.hub.hints
    seen = hints.epoch(instance_id)  # before the read the memo relies on
    with state.db.quick(write=False) as conn:
        poll = poll_queue(instance_id, limit, conn=conn)
    if not poll.found:
        return None
    answer = poll_answer(poll)
    if not poll.items:
        hints.remember_empty(instance_id, answer, seen)
    return answer


def quick_heartbeat(state: ServerState, body: HeartbeatRequest, scope: Scope) -> bytes | None:
    """A heartbeat whose inventory the row already holds, of a live instance; memo'd when quiet."""
    seen = state.hub.hints.epoch(body.instance_id)
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
    """A `running` or `succeeded` report: the item moves (or not), the disk figures are kept.

    A `succeeded` one may prove a dep installed and make jobs ready: it goes through
    `apply_status`, the handler's function, in one transaction; a `running` one only
    moves its item, one statement on the quick connection.
    """
    if body.state not in QUICK_REPORT_STATES:
        return None
    report = body.to_core()
    if body.state == ItemState.SUCCEEDED.value:
        with state.db.session() as session:
            result = apply_status(body.instance_id, report, session=session, policy=state.policy)
            session.commit()
        return status_answer(result)
    memo = state.hub.hints.beat_memo(body.instance_id)
    with state.db.quick(write=True) as conn:
        result = record_report(
            body.instance_id,
            report,
            conn=conn,
            now=utcnow(),
            # The row holds what the last heartbeat wrote (the memo's figures, FIGURES first).
            stored_figures=memo.figures[: len(FIGURES)] if memo and memo.figures else None,
        )
    return status_answer(result)
