"""The four endpoints of dependency protocol v1, plus long-poll and pins.

The routes declare what `/openapi.json` documents (paths, parameters, bodies,
answers, errors). The agent gateway's front (`server/agent_gateway/asgi.py`)
parses and answers every request to these paths before FastAPI routes it; the
handlers call the same pipeline only for an app served without its front (a
bare `create_app` under a test client).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from depman.server.agent_gateway.requests import PollQuery, caller_of
from depman.server.deps import BearerDep, PipelineDep
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

router = APIRouter(prefix="/api/dependencies", tags=["agent protocol v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}


@router.post("/register", response_model=RegisterResponse, responses=ERRORS)
async def register_agent(
    request: Request,
    body: RegisterRequest,
    pipeline: PipelineDep,
    x_dm_secret: Annotated[str | None, Header(alias="X-DM-Secret")] = None,
) -> Response:
    """Find the instance, issue its agent token, queue the boot prefetch."""
    caller = caller_of(request.scope, None, x_dm_secret)
    return (await pipeline.register(caller, body)).response()


@router.get("/queue", response_model=QueueResponse, responses=ERRORS)
async def get_queue(
    request: Request,
    pipeline: PipelineDep,
    token: BearerDep,
    query: Annotated[PollQuery, Query()],
) -> Response:
    """Queued items, jobs' deps first then oldest; with `waitSeconds`, wait for one."""
    caller = caller_of(request.scope, token)
    return (await pipeline.poll(caller, query)).response()


@router.post("/status", response_model=StatusResponse, responses=ERRORS)
async def post_status(
    request: Request, body: StatusRequest, pipeline: PipelineDep, token: BearerDep
) -> Response:
    """Move an item forward; late or repeated reports are acknowledged and ignored."""
    caller = caller_of(request.scope, token)
    return (await pipeline.status(caller, body)).response()


@router.post("/heartbeat", response_model=HeartbeatResponse, responses=ERRORS)
async def post_heartbeat(
    request: Request, body: HeartbeatRequest, pipeline: PipelineDep, token: BearerDep
) -> Response:
    """Record the inventory (a diff) and scalars; answer the pins and the static deps."""
    caller = caller_of(request.scope, token)
    return (await pipeline.heartbeat(caller, body)).response()
