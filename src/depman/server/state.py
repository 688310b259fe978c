"""What one server process holds: settings, database, policy, wake-ups, token cache."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request

from depman.core.policy import Policy
from depman.core.wakeups import WakeupHub
from depman.settings import ServerSettings
from depman.store.session import Database

TOKEN_CACHE_SECONDS = 60.0


class TokenCache:
    """instance id → token hash, so the hot agent paths skip one query.

    Entries expire, so a re-register served by another replica retires the old
    token here within TOKEN_CACHE_SECONDS.
    """

    def __init__(self, ttl: float = TOKEN_CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def matches(self, instance_id: str, token_hash: str) -> bool:
        """Whether a fresh cached hash for the instance equals `token_hash`."""
        entry = self._entries.get(instance_id)
        if entry is None or entry[1] < time.monotonic():
            return False
        return hmac.compare_digest(entry[0], token_hash)

    def put(self, instance_id: str, token_hash: str) -> None:
        """Remember a verified hash."""
        with self._lock:
            self._entries[instance_id] = (token_hash, time.monotonic() + self._ttl)

    def drop(self, instance_id: str) -> None:
        """Forget an instance (re-register, delete)."""
        with self._lock:
            self._entries.pop(instance_id, None)


@dataclass
class ServerState:
    """Shared by every request of one process."""

    settings: ServerSettings
    db: Database
    policy: Policy
    hub: WakeupHub = field(default_factory=WakeupHub)
    tokens: TokenCache = field(default_factory=TokenCache)


def server_state(request: Request) -> ServerState:
    """The process state from a request."""
    state: ServerState = request.app.state.depman
    return state
