"""What later field agents ask beyond the four v1 calls: the queue-item check, `/api/agent/*`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from depman.core.item_check import check_item
from depman.server.auth import attempt, check_agent
from depman.server.deps import BearerDep, ReadSessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.agent import QueueItemCheckResponse
from depman.server.schemas.bounds import ID_PATTERN, MAX_ITEM_ID_CHARS, IdQuery
from depman.server.state import client_address

router = APIRouter(tags=["agent protocol v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422)
}


@router.get("/api/dependencies/queue-item", response_model=QueueItemCheckResponse, responses=ERRORS)
def get_queue_item(
    request: Request,
    session: ReadSessionDep,
    state: StateDep,
    token: BearerDep,
    instance_id: IdQuery,
    item_id: Annotated[
        str,
        Query(alias="itemId", min_length=1, max_length=MAX_ITEM_ID_CHARS, pattern=ID_PATTERN),
    ],
) -> JSONResponse:
    """One of the caller's own items: state, cancelReason, forceRetry, resolved.

    A 404 says `"exists": false`: the agent drops its local retry of the item.
    """
    with attempt(state, "agent", client_address(request)):
        check_agent(state, instance_id, token, session=session)
    found = check_item(instance_id, item_id, session=session)
    if found.item is None:
        body: dict[str, Any] = {
            "error": {"code": "not_found", "message": f"item {item_id!r}: {found.reason}"},
            "exists": False,
            "item": None,
        }
        if found.current_item_id:
            body["currentItemId"] = found.current_item_id
        return JSONResponse(body, status_code=404)
    return JSONResponse({"item": found.item})


@router.api_route(
    "/api/agent/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    status_code=404,
    responses={404: {"model": ErrorResponse}},
    include_in_schema=False,
)
def no_job_channel(rest: str) -> JSONResponse:
    """Later field agents try a job-execution channel first; 404 sends them to
    dependency-only mode (no database, no auth: answered at once)."""
    return JSONResponse(
        {
            "error": {
                "code": "not_found",
                "message": "this control plane runs no /api/agent job channel; "
                "use the dependency protocol (/api/dependencies/*)",
            }
        },
        status_code=404,
    )
