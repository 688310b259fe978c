"""Admin API: operator actions on queue items, instances and jobs, and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse

from depman.core import operator
from depman.core.audit import action_document, list_actions
from depman.core.clock import utcnow
from depman.core.inventory import held_by_instances
from depman.core.views import instance_document, queue_item_document
from depman.server.api.jobs import answer as job_answer
from depman.server.deps import AdminDep, ReadSessionDep, SessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.actions import ActionsOut, CancelIn, DeleteDepIn, DrainIn, RetryIn
from depman.server.schemas.admin import InstanceOut, QueueItemAdmin
from depman.server.schemas.bounds import ID_PATTERN, MAX_ID_CHARS, NO_CONTROLS_PATTERN, IdPath
from depman.server.schemas.jobs import JobPublic

router = APIRouter(prefix="/api/admin", tags=["admin: operator actions"], dependencies=[AdminDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 422)
}
ActorHeader = Annotated[
    str | None,
    Header(
        alias="X-Depman-Actor",
        max_length=150,
        pattern=NO_CONTROLS_PATTERN,
        description="Who acts (the CLI sends user@host); recorded in the audit log.",
    ),
]


def api_actor(request: Request, name: str | None) -> str:
    """The audit log's `who` for an admin API call."""
    client = request.client.host if request.client else "?"
    return f"api:{name.strip()}" if name and name.strip() else f"api@{client}"


@router.post(
    "/queues/{instance_id}/items/{dep_id}/cancel",
    response_model=QueueItemAdmin,
    responses=ERRORS,
)
def cancel_item(
    instance_id: IdPath,
    dep_id: IdPath,
    body: CancelIn,
    request: Request,
    session: SessionDep,
    state: StateDep,
    actor: ActorHeader = None,
) -> dict[str, Any]:
    """Cancel an open item: queued ones end now, running ones when the agent confirms."""
    row = operator.cancel_item(
        instance_id,
        dep_id,
        body.reason,
        actor=api_actor(request, actor),
        session=session,
        policy=state.policy,
    )
    document = queue_item_document(row)
    session.commit()
    return document


@router.post(
    "/queues/{instance_id}/items/{dep_id}/retry", response_model=QueueItemAdmin, responses=ERRORS
)
def retry_item(
    instance_id: IdPath,
    dep_id: IdPath,
    body: RetryIn,
    request: Request,
    session: SessionDep,
    actor: ActorHeader = None,
) -> dict[str, Any]:
    """Retry a failed or backing-off item now (`forceRetry`)."""
    row = operator.retry_item(
        instance_id, dep_id, body.after_ms, actor=api_actor(request, actor), session=session
    )
    document = queue_item_document(row)
    session.commit()
    return document


@router.post(
    "/instances/{instance_id}/deps/{dep_id}/delete",
    response_model=QueueItemAdmin,
    responses=ERRORS,
)
def delete_dep(
    instance_id: IdPath,
    dep_id: IdPath,
    body: DeleteDepIn,
    request: Request,
    session: SessionDep,
    actor: ActorHeader = None,
) -> dict[str, Any]:
    """Queue a `delete` of the dep's file on the instance (static/pinned: `force`)."""
    row = operator.delete_dep(
        instance_id, dep_id, body.force, actor=api_actor(request, actor), session=session
    )
    document = queue_item_document(row)
    session.commit()
    return document


@router.post("/instances/{instance_id}/drain", response_model=InstanceOut, responses=ERRORS)
def drain_instance(
    instance_id: IdPath,
    body: DrainIn,
    request: Request,
    session: SessionDep,
    state: StateDep,
    actor: ActorHeader = None,
) -> dict[str, Any]:
    """Drain (no new jobs; its jobs finish) or reopen an instance."""
    row = operator.set_drained(
        instance_id, body.drained, actor=api_actor(request, actor), session=session
    )
    document = instance_document(
        row,
        held_by_instances([instance_id], session=session)[instance_id],
        now=utcnow(),
        live_ttl_seconds=state.policy.live_ttl_seconds,
    )
    session.commit()
    return document


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
def cancel_job(
    job_id: IdPath,
    body: CancelIn,
    request: Request,
    session: SessionDep,
    state: StateDep,
    actor: ActorHeader = None,
) -> JSONResponse:
    """Cancel an open job: it fails with the reason and releases its instance."""
    job = operator.cancel_job(
        job_id,
        body.reason,
        actor=api_actor(request, actor),
        session=session,
        policy=state.policy,
    )
    response = job_answer(job, session=session)
    session.commit()
    return response


@router.get("/actions", response_model=ActionsOut, responses=ERRORS)
def get_actions(
    session: ReadSessionDep,
    instance_id: Annotated[
        str | None, Query(alias="instanceId", max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
    ] = None,
    job_id: Annotated[
        str | None, Query(alias="jobId", max_length=MAX_ID_CHARS, pattern=ID_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The audit log, newest first: who did what, to what, when."""
    rows = list_actions(session=session, instance_id=instance_id, job_id=job_id, limit=limit)
    return {"actions": [action_document(r) for r in rows]}
