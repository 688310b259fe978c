"""The full stage: agent requests answered by the core's domain calls in a session.

Everything the memos and the quick statements do not take ends here, in a worker
thread: register, a changed inventory (the diff, restored static deps, jobs made
ready, pending jobs placed), every status report but `running`, the queue-item
check, and a poll whose quick read failed or found no instance. Errors are the
core's (`depman.errors`), raised to the front that received the request.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Scope

from depman.core.instances import hash_token, register
from depman.core.inventory import apply_heartbeat
from depman.core.item_check import check_item
from depman.core.pins import compute_pins
from depman.core.profiles import static_dep_ids_of_type
from depman.core.queue import poll_queue
from depman.core.reports import apply_status
from depman.core.scheduler import place_pending_jobs
from depman.core.views import profile_document
from depman.errors import NotFound
from depman.server.agent_gateway.answers import (
    Answer,
    heartbeat_answer,
    item_answer,
    no_item_answer,
    register_answer,
    status_answer,
)
from depman.server.agent_gateway.memo import remember_heartbeat
from depman.server.agent_gateway.quick import PollRead, poll_read
from depman.server.agent_updates import update_offer
from depman.server.logsafe import quoted
from depman.server.schemas.agent import HeartbeatRequest, RegisterRequest, StatusRequest
from depman.server.state import ServerState
from depman.store.session import ASYNC_COMMIT

log = logging.getLogger(__name__)
# A heartbeat offers its own free slots to this many of the oldest pending jobs.
PENDING_PER_HEARTBEAT = 5
EMPTY_PROFILE: dict[str, Any] = {"staticDepIds": [], "prefetchOnBoot": False, "dynamicPolicy": {}}


def full_register(state: ServerState, body: RegisterRequest, scope: Scope) -> bytes:
    """Find the instance, issue its agent token, queue the boot prefetch."""
    with state.db.session() as session:
        result = register(
            body.server_type,
            body.agent_version,
            body.instance_id,
            body.instance_ip,
            session=session,
            policy=state.policy,
            provider=body.provider,
            provider_metadata=body.provider_metadata,
        )
        instance_id = result.instance.instance_id
        update = update_offer(
            state,
            scope,
            instance_id=instance_id,
            server_type=result.instance.server_type,
            agent_version=result.instance.agent_version,
            conn=session.connection(),
        )
        session.commit()  # the commit hook drops the old token's memo
    hints = state.cache.memos
    hints.remember_token(instance_id, hash_token(result.token), hints.epoch(instance_id))
    log.info(
        "registered agent: instanceId=%s agentVersion=%s prefetch=%d",
        quoted(instance_id),
        quoted(body.agent_version),
        len(result.queued),
    )
    profile = EMPTY_PROFILE
    if result.profile is not None:
        profile = profile_document(result.profile, result.static_dep_ids)
    return register_answer(instance_id, result.token, profile, update)


def full_poll(state: ServerState, instance_id: str, limit: int) -> PollRead:
    """The queue of an instance in a read session; memo'd when empty."""
    hints = state.cache.memos
    seen = hints.epoch(instance_id)
    with state.db.read_session() as session:
        poll = poll_queue(
            instance_id, limit, conn=session.connection(),
            mirror_link=state.mirror_link, gate=state.upstream,
        )
    if not poll.found:
        raise NotFound(f"instance {instance_id!r} does not exist")
    return poll_read(state, instance_id, poll, seen)


def full_heartbeat(state: ServerState, body: HeartbeatRequest, scope: Scope) -> bytes:
    """Record the inventory (a diff) and scalars; answer the pins and the static deps."""
    seen = state.cache.memos.epoch(body.instance_id)  # before any read the memo relies on
    hb = body.to_core()
    with state.db.session() as session:
        result = apply_heartbeat(body.instance_id, hb, session=session, policy=state.policy)
        static = static_dep_ids_of_type(result.server_type, conn=session.connection())
        if not result.changed and state.db.dialect == "postgresql":
            session.execute(ASYNC_COMMIT)  # only liveness and scalars were written
        session.commit()
        pins = result.pinned_dep_ids
        if (result.became_live or result.changed) and (
            result.server_type in state.cache.pending
        ):
            # A newly live instance, or new deps held: pending jobs of its type may fit
            # now. (Slots freed by jobs ending are offered where the job ends; the sweep
            # retries.)
            placed, _full = place_pending_jobs(
                session=session,
                policy=state.policy,
                server_types=[result.server_type],
                only=body.instance_id,
                limit=PENDING_PER_HEARTBEAT,
            )
            session.commit()
            if placed:
                pins = compute_pins(body.instance_id, session=session)
                session.commit()
        update = update_offer(
            state,
            scope,
            instance_id=body.instance_id,
            server_type=result.server_type,
            agent_version=result.agent_version,
            conn=session.connection(),
        )
        answer = heartbeat_answer(pins, static, update)
    # The next heartbeat like this one is answered by the memo stage.
    remember_heartbeat(state, body, hb, result.digest, answer, seen)
    return answer


def full_status(state: ServerState, body: StatusRequest) -> bytes:
    """Move an item forward and apply what follows; late or repeated reports are
    acknowledged and ignored."""
    with state.db.session() as session:
        report = body.to_core()
        result = apply_status(body.instance_id, report, session=session, policy=state.policy)
        session.commit()
    return status_answer(result)


def full_item_check(state: ServerState, instance_id: str, item_id: str) -> Answer:
    """One of the caller's own items, or the 404 that says it does not exist."""
    with state.db.read_session() as session:
        found = check_item(
            instance_id, item_id, session=session, mirror_link=state.mirror_link
        )
    if found.item is None:
        return no_item_answer(item_id, found.reason, found.current_item_id)
    return item_answer(found.item)
