"""Admin API: agent builds published per server type (`depman agent publish`)."""

from __future__ import annotations

import tempfile
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from depman.core import agent_builds
from depman.core.agent_builds import MAX_BUILD_BYTES, BuildStatus, BuildTarget
from depman.core.clock import isoformat
from depman.errors import BuildTooLarge, NotFound, UploadCut
from depman.server.agent_updates import BUILD_PATH, base_url
from depman.server.deps import AdminDep, ReadSessionDep, SessionDep
from depman.server.schemas import ApiModel, ErrorResponse
from depman.server.schemas.bounds import NO_CONTROLS_PATTERN, IdPath
from depman.server.state import ServerState, server_state

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 422)
}


class AgentBuildOut(ApiModel):
    """A published build and how far its rollout got."""

    server_type: str
    version: str
    sha256: str
    size_bytes: int
    rollout_percent: int
    published_at: str | None
    download_url: str
    instances: int | None = None
    on_target: int | None = None
    offered: int | None = None


class AgentBuildsOut(ApiModel):
    """Every published build."""

    builds: list[AgentBuildOut]


class RolloutIn(ApiModel):
    """A new rollout percentage for the published build."""

    rollout_percent: int = Field(ge=0, le=100)


def build_document(
    target: BuildTarget, root: str, status: BuildStatus | None = None
) -> dict[str, Any]:
    """The JSON form of a published build."""
    document: dict[str, Any] = {
        "serverType": target.server_type,
        "version": target.version,
        "sha256": target.sha256,
        "sizeBytes": target.size_bytes,
        "rolloutPercent": target.rollout_percent,
        "publishedAt": isoformat(target.published_at),
        "downloadUrl": root + BUILD_PATH.format(sha256=target.sha256),
    }
    if status is not None:
        document.update(
            instances=status.instances, onTarget=status.on_target, offered=status.offered
        )
    return document


def _status_of(server_type: str, session: Any) -> BuildStatus:
    for status in agent_builds.list_builds(session=session):
        if status.target.server_type == server_type:
            return status
    raise NotFound(f"no agent build is published for server type {server_type!r}")


async def _spool(request: Request, spool: BinaryIO) -> None:
    """The body into `spool`, chunk by chunk: never held in memory whole while it arrives."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BUILD_BYTES:
                raise BuildTooLarge(f"the agent build is over {MAX_BUILD_BYTES} bytes")
            if chunk:
                await run_in_threadpool(spool.write, chunk)
    except ClientDisconnect as exc:
        raise UploadCut(f"the upload ended after {size} bytes, before its end") from exc


def _publish(
    state: ServerState, server_type: str, spool: BinaryIO, version: str | None, percent: int
) -> BuildStatus:
    spool.seek(0)
    data = spool.read()  # the database keeps the bytes: one copy, once the upload is whole
    with state.db.session() as session:
        agent_builds.publish_build(
            server_type, data, version=version, rollout_percent=percent, session=session
        )
        session.commit()
        return _status_of(server_type, session)


@router.put(
    "/agent-builds/{server_type}",
    response_model=AgentBuildOut,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def publish_agent_build(
    server_type: IdPath,
    request: Request,
    version: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROLS_PATTERN)] = None,
    rollout_percent: Annotated[int, Query(alias="rolloutPercent", ge=0, le=100)] = 100,
) -> dict[str, Any]:
    """Publish the request body (the agent file) for `server_type`, replacing its build.

    The admin token is checked (the router's dependency) before a byte is read.
    """
    state = server_state(request)
    with tempfile.TemporaryFile(prefix="depman-build-") as spool:
        await _spool(request, spool)
        status = await run_in_threadpool(
            _publish, state, server_type, spool, version, rollout_percent
        )
    return build_document(status.target, base_url(state, request.scope), status)


@router.get("/agent-builds", response_model=AgentBuildsOut, responses=ERRORS)
def list_agent_builds(request: Request, session: ReadSessionDep) -> dict[str, Any]:
    """Every published build, with its instances counted."""
    root = base_url(server_state(request), request.scope)
    statuses = agent_builds.list_builds(session=session)
    return {"builds": [build_document(s.target, root, s) for s in statuses]}


@router.get("/agent-builds/{server_type}", response_model=AgentBuildOut, responses=ERRORS)
def get_agent_build(
    server_type: IdPath, request: Request, session: ReadSessionDep
) -> dict[str, Any]:
    """The build published for `server_type`."""
    status = _status_of(server_type, session)
    return build_document(status.target, base_url(server_state(request), request.scope), status)


@router.patch("/agent-builds/{server_type}", response_model=AgentBuildOut, responses=ERRORS)
def set_rollout(
    server_type: IdPath, body: RolloutIn, request: Request, session: SessionDep
) -> dict[str, Any]:
    """Change the rollout percentage of the published build (no new upload)."""
    agent_builds.set_rollout(server_type, body.rollout_percent, session=session)
    session.commit()
    status = _status_of(server_type, session)
    return build_document(status.target, base_url(server_state(request), request.scope), status)


@router.delete("/agent-builds/{server_type}", status_code=204, responses=ERRORS)
def unpublish_agent_build(server_type: IdPath, session: SessionDep) -> Response:
    """Stop offering the build of `server_type`; agents keep what they run."""
    agent_builds.unpublish_build(server_type, session=session)
    session.commit()
    return Response(status_code=204)
