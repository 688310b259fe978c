"""FastAPI dependencies: sessions and auth."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from depman.server.agent_gateway.pipeline import Pipeline
from depman.server.agent_gateway.write_behind import flush_beats
from depman.server.auth import ADMIN_TOKEN, SUBMIT_TOKEN, attempt, bearer_token, check_admin
from depman.server.state import ServerState, client_address, server_state


def get_session(request: Request) -> Iterator[Session]:
    """A write session per request; uncommitted work is rolled back."""
    with server_state(request).db.session() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A read-only session per request."""
    with server_state(request).db.read_session() as session:
        yield session


def _see_acknowledged_beats(request: Request) -> None:
    # The write-behind batch (server/agent_gateway/write_behind.py) would otherwise lag by up to a
    # second: what this process acknowledged, its own admin reads see.
    state = server_state(request)
    if len(state.cache.beats):
        flush_beats(state)


def get_fresh_read_session(request: Request) -> Iterator[Session]:
    """A read-only session that sees every heartbeat this process has acknowledged."""
    _see_acknowledged_beats(request)
    with server_state(request).db.read_session() as session:
        yield session


# The small dependencies are `async def` so they run inline instead of costing a
# thread hop each on the hot agent paths.
async def get_bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The bearer token of the request, if any."""
    return bearer_token(authorization)


async def require_admin(
    request: Request, token: Annotated[str | None, Depends(get_bearer)]
) -> None:
    """Admin endpoints: `Authorization: Bearer $DEPMAN_ADMIN_TOKEN`."""
    state = server_state(request)
    with attempt(state, "admin", client_address(request), (ADMIN_TOKEN,)) as tried:
        tried.kind = check_admin(state, token)


async def require_jobs(request: Request, token: Annotated[str | None, Depends(get_bearer)]) -> None:
    """Job endpoints: the admin token or the submit token."""
    state = server_state(request)
    # A wrong token here is a guess at either; a submit token's success forgives
    # only submit-token failures, so it cannot reset admin-token guessing.
    kinds = (ADMIN_TOKEN, SUBMIT_TOKEN)
    with attempt(state, "admin", client_address(request), kinds) as tried:
        tried.kind = check_admin(state, token, allow_submit=True)


async def get_state(request: Request) -> ServerState:
    """The process state."""
    return server_state(request)


async def get_pipeline(request: Request) -> Pipeline:
    """The process's agent pipeline (server/agent_gateway/pipeline.py)."""
    pipeline: Pipeline = request.app.state.agent_pipeline
    return pipeline


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
FreshReadSessionDep = Annotated[Session, Depends(get_fresh_read_session)]
StateDep = Annotated[ServerState, Depends(get_state)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
BearerDep = Annotated[str | None, Depends(get_bearer)]
AdminDep = Depends(require_admin)
JobsAuthDep = Depends(require_jobs)
