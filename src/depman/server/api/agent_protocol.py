"""The four endpoints of dependency protocol v1, plus long-poll and pins."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from depman.core.instances import hash_token, register
from depman.core.inventory import apply_heartbeat
from depman.core.pins import compute_pins
from depman.core.profiles import static_dep_ids_of_type
from depman.core.queue import QueuePoll, poll_queue
from depman.core.reports import apply_status
from depman.core.scheduler import place_pending_jobs
from depman.core.views import profile_document
from depman.errors import NotFound
from depman.server.agent_answers import heartbeat_answer, poll_answer, status_answer
from depman.server.agent_updates import update_offer
from depman.server.auth import attempt, check_agent, check_shared_secret
from depman.server.deps import BearerDep, SessionDep, StateDep
from depman.server.logsafe import quoted
from depman.server.memo_answers import empty_poll_answer, remember_heartbeat
from depman.server.schemas import ErrorResponse
from depman.server.schemas.agent import (
    HeartbeatRequest,
    HeartbeatResponse,
    QueueResponse,
    RegisterRequest,
    RegisterResponse,
    StatusRequest,
    StatusResponse,
)
from depman.server.schemas.bounds import IdQuery
from depman.server.state import ServerState, client_address, server_state
from depman.store.session import ASYNC_COMMIT

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/dependencies", tags=["agent protocol v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
# A heartbeat offers its own free slots to this many of the oldest pending jobs.
PENDING_PER_HEARTBEAT = 5
CAPABILITIES = {"longPoll": True, "maxWaitSeconds": 30, "pinnedDepIds": True, "touchResolved": True}


@router.post("/register", response_model=RegisterResponse, responses=ERRORS)
def register_agent(
    request: Request,
    body: RegisterRequest,
    session: SessionDep,
    state: StateDep,
    x_dm_secret: Annotated[str | None, Header(alias="X-DM-Secret")] = None,
) -> JSONResponse:
    """Find the instance, issue its agent token, queue the boot prefetch."""
    with attempt(state, "register", client_address(request)):
        check_shared_secret(state, x_dm_secret)
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
        request.scope,
        instance_id=instance_id,
        server_type=result.instance.server_type,
        agent_version=result.instance.agent_version,
        conn=session.connection(),
    )
    session.commit()  # the commit hook drops the old token's memo
    hints = state.hub.hints
    hints.remember_token(instance_id, hash_token(result.token), hints.epoch(instance_id))
    log.info(
        "registered agent: instanceId=%s agentVersion=%s prefetch=%d",
        quoted(instance_id),
        quoted(body.agent_version),
        len(result.queued),
    )
    profile: dict[str, Any] = {"staticDepIds": [], "prefetchOnBoot": False, "dynamicPolicy": {}}
    if result.profile is not None:
        profile = profile_document(result.profile, result.static_dep_ids)
    answer: dict[str, Any] = {
        "instanceId": instance_id,
        "agentToken": result.token,
        "profile": profile,
        "capabilities": CAPABILITIES,
    }
    if update is not None:
        answer["agentUpdate"] = update
    return JSONResponse(answer)


def _poll(
    state: ServerState, instance_id: str, token: str | None, limit: int, client: str | None
) -> QueuePoll:
    with state.db.read_session() as session:
        if client is not None:
            with attempt(state, "agent", client):
                check_agent(state, instance_id, token, session=session)
        poll = poll_queue(instance_id, limit, conn=session.connection())
    if not poll.found:
        raise NotFound(f"instance {instance_id!r} does not exist")
    return poll


async def _poll_db(
    state: ServerState, instance_id: str, token: str | None, limit: int, client: str | None
) -> tuple[QueuePoll, bytes]:
    """The queue from the database; `client`: check the token first (failures recorded)."""
    seen = state.hub.hints.epoch(instance_id)
    poll = await run_in_threadpool(_poll, state, instance_id, token, limit, client)
    answer = poll_answer(poll)
    if not poll.items:
        state.hub.hints.remember_empty(instance_id, answer, seen)
    return poll, answer


@router.get("/queue", response_model=QueueResponse, responses=ERRORS)
async def get_queue(
    request: Request,
    token: BearerDep,
    instance_id: IdQuery,
    limit: Annotated[int, Query(ge=1, le=1000)] = 25,
    wait_seconds: Annotated[
        float, Query(alias="waitSeconds", ge=0, le=30, description="Long-poll (extension).")
    ] = 0,
) -> Response:
    """Queued items, jobs' deps first then oldest; with `waitSeconds`, wait for one."""
    state = server_state(request)
    wait = min(wait_seconds, state.settings.max_long_poll_seconds)
    # Subscribe before looking: an enqueue committed after this point wakes the wait.
    entry = state.hub.subscribe("i", instance_id) if wait > 0 else None
    try:
        answer = empty_poll_answer(state, instance_id, token)
        if answer is None:
            client = client_address(request)
            poll, answer = await _poll_db(state, instance_id, token, limit, client)
            if poll.items:
                return Response(answer, media_type="application/json")
        if entry is not None and await state.hub.wait(entry, wait):
            _poll_result, answer = await _poll_db(state, instance_id, token, limit, None)
    finally:
        if entry is not None:
            state.hub.unsubscribe("i", instance_id, entry)
    return Response(answer, media_type="application/json")


@router.post("/status", response_model=StatusResponse, responses=ERRORS)
def post_status(
    request: Request, body: StatusRequest, session: SessionDep, state: StateDep, token: BearerDep
) -> Response:
    """Move an item forward; late or repeated reports are acknowledged and ignored."""
    with attempt(state, "agent", client_address(request)):
        check_agent(state, body.instance_id, token, session=session)
    result = apply_status(body.instance_id, body.to_core(), session=session, policy=state.policy)
    session.commit()
    return Response(status_answer(result), media_type="application/json")


@router.post("/heartbeat", response_model=HeartbeatResponse, responses=ERRORS)
def post_heartbeat(
    request: Request,
    body: HeartbeatRequest,
    session: SessionDep,
    state: StateDep,
    token: BearerDep,
) -> Response:
    """Record the inventory (a diff) and scalars; answer the pins and the static deps."""
    hints = state.hub.hints
    seen = hints.epoch(body.instance_id)  # before any read the memo below relies on
    with attempt(state, "agent", client_address(request)):
        check_agent(state, body.instance_id, token, session=session)
    hb = body.to_core()
    result = apply_heartbeat(body.instance_id, hb, session=session, policy=state.policy)
    static = static_dep_ids_of_type(result.server_type, conn=session.connection())
    if not result.changed and state.db.dialect == "postgresql":
        session.execute(ASYNC_COMMIT)  # only liveness and scalars were written
    session.commit()
    pins = result.pinned_dep_ids
    if (result.became_live or result.changed) and (
        result.server_type in state.hub.pending_server_types
    ):
        # A newly live instance, or new deps held: pending jobs of its type may fit now.
        # (Slots freed by jobs ending are offered where the job ends; the sweep retries.)
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
        request.scope,
        instance_id=body.instance_id,
        server_type=result.server_type,
        agent_version=result.agent_version,
        conn=session.connection(),
    )
    answer = heartbeat_answer(pins, static, update)
    # The next heartbeat like this one is answered by the fast lane (server/fastlane.py).
    remember_heartbeat(state, body, hb, result.digest, answer, seen)
    return Response(answer, media_type="application/json")
