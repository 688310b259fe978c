"""What one server process holds: settings, database, policy, the gateway's cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from starlette.types import Scope

from depman.core.catalog import DepSpec
from depman.core.policy import Policy
from depman.core.upstream import UpstreamGate
from depman.mirror import FillWorker, MirrorService
from depman.server.auth_failures import AuthFailures
from depman.server.cache import ServerCache
from depman.settings import ServerSettings
from depman.store.session import Database


@dataclass
class ServerState:
    """Shared by every request of one process."""

    settings: ServerSettings
    db: Database
    policy: Policy
    cache: ServerCache = field(default_factory=ServerCache)  # memos, wake-ups, write-behind
    auth_failures: AuthFailures = field(default_factory=AuthFailures)
    # Resolves hf:// and civitai:// sources when catalog entries are put.
    resolver: Callable[[DepSpec], DepSpec] | None = None
    # The upstream caps every poll applies; None without DEPMAN_UPSTREAM_CONCURRENCY.
    upstream: UpstreamGate | None = field(init=False, default=None)
    # The fleet mirror (DEPMAN_MIRROR_URL) and its fill worker (started with the app).
    mirror: MirrorService | None = None
    fill_worker: FillWorker | None = None

    def __post_init__(self) -> None:
        caps = self.settings.upstream_caps
        if caps:
            self.upstream = UpstreamGate(
                caps=caps,
                lease_seconds=self.settings.upstream_lease_seconds,
                begin=self.db.engine.begin,
            )

    @property
    def mirror_link(self) -> Callable[[str], str] | None:
        """sha256 -> the URL agents download the mirror's copy from; None: no mirror."""
        return self.mirror.link if self.mirror is not None else None


def client_address(request: Request) -> str:
    """The client's address (the proxy's forwarded one when the peer is trusted)."""
    return scope_client(request.scope)


def scope_client(scope: Scope) -> str:
    """The client's address of an ASGI scope (uvicorn puts the forwarded one there)."""
    client = scope.get("client")
    return str(client[0]) if client is not None else "unknown"


def server_state(request: Request) -> ServerState:
    """The process state from a request."""
    state: ServerState = request.app.state.depman
    return state
