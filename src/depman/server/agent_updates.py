"""`agentUpdate` in register and heartbeat answers: one function every stage calls.

The agent gateway's quick and full stages (`server/agent_gateway/quick.py`,
`full.py`) ask `update_offer` with the instance's server type and agent version
as their statements read them; the memo stage replays answers built with it,
and those memos are dropped whenever a build is published or unpublished
(`WakeupHub.forget_builds`). The admin API's build documents use `base_url` too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from starlette.types import Scope

from depman.core.agent_builds import BuildTarget, offered_build
from depman.server.state import ServerState

BUILD_PATH = "/agent/builds/{sha256}.pyz"


def base_url(state: ServerState, scope: Scope) -> str:
    """Where agents reach this server: `public_url`, else as this request reached it."""
    if state.settings.public_url:
        return state.settings.public_url.rstrip("/")
    host = ""
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1")
            break
    if not host and scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port else str(server_host)
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


def update_document(build: BuildTarget, root: str) -> dict[str, Any]:
    """The `agentUpdate` field of protocol v1's field agents (0.6.0+) and depman's agent."""
    return {
        "targetVersion": build.version,
        "downloadUrl": root + BUILD_PATH.format(sha256=build.sha256),
        "sha256": build.sha256,
    }


def update_offer(
    state: ServerState,
    scope: Scope,
    *,
    instance_id: str,
    server_type: str,
    agent_version: str | None,
    conn: Connection,
) -> dict[str, Any] | None:
    """`agentUpdate` for this instance now, or None (no build, same version, outside rollout)."""
    build = offered_build(state.cache.builds.target(server_type, conn), instance_id, agent_version)
    return None if build is None else update_document(build, base_url(state, scope))
