"""What later field agents ask beyond the four v1 calls: the queue-item check.

`/api/agent/*` (a job channel depman does not run) is answered by the gateway's front
(`agent_gateway/asgi.py`) before any route.

As in `agent_protocol.py`, the routes document and parse; the agent gateway's
pipeline answers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from depman.server.agent_gateway.requests import ItemQuery, caller_of
from depman.server.deps import BearerDep, PipelineDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.agent import QueueItemCheckResponse

router = APIRouter(tags=["agent protocol v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 422)
}


@router.get("/api/dependencies/queue-item", response_model=QueueItemCheckResponse, responses=ERRORS)
async def get_queue_item(
    request: Request,
    pipeline: PipelineDep,
    token: BearerDep,
    query: Annotated[ItemQuery, Query()],
) -> Response:
    """One of the caller's own items: state, cancelReason, forceRetry, resolved.

    A 404 says `"exists": false`: the agent drops its local retry of the item.
    """
    caller = caller_of(request.scope, token)
    return (await pipeline.item_check(caller, query)).response()
