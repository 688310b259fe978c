"""The agent files: the built-in bundle, and the builds operators publish (`agentUpdate`).

- `GET /agent/depman-agent.pyz`: the zipapp `python3 depman-agent.pyz` runs;
  with `?serverType=T`, the build published for T when there is one.
- `GET /agent/depman-agent.pyz.sha256`: the same file's sha256 (plain hex), for
  scripts that check what they download.
- `GET /agent/builds/{sha256}.pyz`: a published build by content, the
  `downloadUrl` of `agentUpdate`.

Every answer carries the file's sha256 in `X-Depman-Agent-Sha256`. No token: the
files hold no secret, and agents fetch them before they have one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from depman.core.agent_builds import build_content, build_of_type
from depman.errors import BundleUnavailable, NotFound
from depman.server.schemas.bounds import ID_PATTERN, MAX_ID_CHARS
from depman.server.state import server_state

log = logging.getLogger(__name__)
router = APIRouter(tags=["agent bundle"])
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ServerTypeQuery = Annotated[
    str | None,
    Query(
        alias="serverType",
        max_length=MAX_ID_CHARS,
        pattern=ID_PATTERN,
        description="The build published for this type.",
    ),
]


@lru_cache(maxsize=1)
def _built_in() -> tuple[str, bytes]:
    # The sources do not change while the server runs.
    try:
        from depman.agent.bundle import bundle_bytes
    except ImportError as exc:
        raise BundleUnavailable("the agent bundle is not available in this build") from exc
    data = bundle_bytes()
    return hashlib.sha256(data).hexdigest(), data


def _agent_file(request: Request, server_type: str | None) -> tuple[str, bytes]:
    if server_type:
        with server_state(request).db.quick(write=False) as conn:
            published = build_of_type(server_type, conn=conn)
        if published is not None:
            return published
    return _built_in()


def _file_response(digest: str, data: bytes) -> Response:
    return Response(
        data,
        media_type="application/zip",
        headers={
            "X-Depman-Agent-Sha256": digest,
            "Content-Disposition": 'attachment; filename="depman-agent.pyz"',
        },
    )


@router.get(
    "/agent/depman-agent.pyz",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, 503: {}},
)
def agent_bundle(request: Request, server_type: ServerTypeQuery = None) -> Response:
    """The agent zipapp; the build published for `serverType` when there is one."""
    return _file_response(*_agent_file(request, server_type))


@router.get("/agent/depman-agent.pyz.sha256", response_class=PlainTextResponse)
def agent_bundle_sha256(request: Request, server_type: ServerTypeQuery = None) -> str:
    """The sha256 (hex) of what `GET /agent/depman-agent.pyz` answers for the same query."""
    digest, _data = _agent_file(request, server_type)
    return digest + "\n"


@router.get(
    "/agent/builds/{name}",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, 404: {}},
)
def published_build(name: str, request: Request) -> Response:
    """A published build by its sha256 (`<sha256>.pyz`), as `agentUpdate.downloadUrl` names it."""
    digest = name.removesuffix(".pyz").lower()
    if not SHA256_RE.match(digest):
        raise NotFound(f"no agent build {name!r}: expected <sha256>.pyz")
    with server_state(request).db.quick(write=False) as conn:
        data = build_content(digest, conn=conn)
    if data is None:
        raise NotFound(f"no agent build with sha256 {digest} is published")
    return _file_response(digest, data)
