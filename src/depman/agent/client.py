"""The control-plane client: register, queue, status, heartbeat (protocol v1)."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from . import protocol as p
from .answer_checks import QueueAnswer, parse_queue, pinned_of, static_dep_ids
from .config import AgentConfig
from .errors import ServerError, Stopping, Unauthorized
from .http import abort_connection, parse_retry_after, send
from .logonce import problems
from .redact import redact
from .retry import RetryPolicy

log = logging.getLogger("depman.agent")


@dataclass(frozen=True)
class Registration:
    instance_id: str
    agent_token: str
    profile: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)
    agent_update: Any = None  # the answer's agentUpdate, as sent

    @property
    def long_poll(self) -> bool:
        return bool(self.capabilities.get("longPoll"))


# A 3xx/4xx that is not 401/403 may come from a proxy in a bad minute: a few tries
# inside the call, then the caller backs off (the loop) or keeps it for later (statuses).
UNEXPECTED_STATUS_ATTEMPTS = 3
__all__ = ["QueueAnswer", "static_dep_ids"]  # re-exported for the loop


@dataclass(frozen=True)
class HeartbeatAnswer:
    pinned: set[str] | None
    static_ids: set[str] | None = None
    agent_update: Any = None  # the answer's agentUpdate, as sent


class ControlPlaneClient:
    """Every call retries network errors and 5xx/429 with capped backoff and jitter,
    honouring Retry-After, and registers again on 401/403. Waits end when ``stop`` is set.
    """

    def __init__(self, config: AgentConfig, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.registration: Registration | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.aborted = False  # set by abort(); cleared for the last calls of a shutdown

    # -- the four calls ---------------------------------------------------
    def register(self) -> Registration:
        body: dict[str, Any] = {"serverType": self.config.server_type,
                                "agentVersion": p.AGENT_VERSION}
        if self.config.instance_id:
            body["instanceId"] = self.config.instance_id
        if self.config.instance_ip:
            body["instanceIp"] = self.config.instance_ip
        headers = {p.SECRET_HEADER: self.config.shared_secret} if self.config.shared_secret else {}
        policy = RetryPolicy(max_attempts=None, base_delay=1.0, max_delay=60.0)
        while True:
            try:
                data = self._request("POST", p.REGISTER_PATH, body, headers=headers)
                instance_id, token = data.get("instanceId"), data.get("agentToken")
                if not isinstance(instance_id, str) or not instance_id or \
                        not isinstance(token, str) or not token:
                    raise ServerError("Register response lacks instanceId or agentToken")
            except ServerError as exc:
                delay = policy.next_delay(exc.retry_after) or 0.0
                hint = ""
                if exc.status == 404:
                    hint = (" (the fix is on the server: declare this instance there, or let "
                            "its server type enrol instances; the message says how)")
                elif exc.status == 422:
                    hint = " (SERVER_TYPE must name a server type the server knows)"
                elif exc.status in (401, 403):
                    hint = " (check DEPENDENCY_MANAGER_SHARED_SECRET)"
                problems.warn("register", "Register failed: %s%s; retrying with backoff "
                              "(now %.1f s)", exc.message, hint, delay)
                if self.stop.wait(delay):
                    raise Stopping("stopped while registering") from exc
                continue
            problems.ok("register")
            profile = data.get("profile") if isinstance(data.get("profile"), dict) else {}
            caps = data.get("capabilities") if isinstance(data.get("capabilities"), dict) else {}
            self.registration = Registration(instance_id, token, profile or {}, caps or {},
                                             data.get("agentUpdate"))
            log.info("Registered dependency agent: instanceId=%s", instance_id)
            return self.registration

    def queue(self, limit: int = p.QUEUE_LIMIT, wait_seconds: float = 0) -> QueueAnswer:
        reg = self._registered()
        query: dict[str, Any] = {"instanceId": reg.instance_id, "limit": limit}
        if wait_seconds > 0 and reg.long_poll:
            query["waitSeconds"] = int(min(wait_seconds, p.LONG_POLL_MAX_SECONDS))
        data = self.call("GET", p.QUEUE_PATH, None, query=query,
                         timeout=p.HTTP_TIMEOUT_SECONDS + wait_seconds)
        return parse_queue(data)

    def status(self, body: dict[str, Any], *, attempts: int | None = None) -> None:
        self.call("POST", p.STATUS_PATH, {"instanceId": self._registered().instance_id, **body},
                  attempts=attempts)

    def heartbeat(self, body: dict[str, Any], *,
                  attempts: int | None = None) -> HeartbeatAnswer:
        data = self.call("POST", p.HEARTBEAT_PATH,
                         {"instanceId": self._registered().instance_id, **body},
                         attempts=attempts)
        return HeartbeatAnswer(pinned_of(data), static_dep_ids(data), data.get("agentUpdate"))

    def item_check(self, item_id: str) -> dict[str, Any] | None:
        """The server's view of one of our items; None when it has none (404).

        One attempt: the answer only refines what the queue already said.
        """
        reg = self._registered()
        try:
            data = self.call("GET", p.QUEUE_ITEM_PATH, None, attempts=1,
                             query={"instanceId": reg.instance_id, "itemId": item_id})
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise
        item = data.get("item")
        return item if isinstance(item, dict) else None

    def abort(self) -> None:
        """Unblock a call in flight (a long-poll) from another thread or a signal handler."""
        self.aborted = True
        abort_connection(self._conn)

    # -- plumbing ---------------------------------------------------------
    def _track(self, conn: http.client.HTTPConnection) -> None:
        self._conn = conn
        if self.aborted:
            raise ConnectionAbortedError("agent is stopping")

    def _registered(self) -> Registration:
        return self.registration or self.register()

    def call(self, method: str, path: str, body: dict[str, Any] | None, *,
             query: Mapping[str, Any] | None = None, timeout: float = p.HTTP_TIMEOUT_SECONDS,
             attempts: int | None = None) -> dict[str, Any]:
        """An authenticated call, retried until it succeeds, ``attempts`` run out or stop."""
        policy = RetryPolicy(max_attempts=attempts, base_delay=1.0, max_delay=60.0)
        unexpected = 0
        key = f"{method} {path}"
        while True:
            reg = self._registered()
            try:
                data = self._request(method, path, body, query=query, timeout=timeout,
                                     headers={"Authorization": f"Bearer {reg.agent_token}"})
            except Unauthorized as exc:
                log.warning("%s %s answered %s; registering again", method, path, exc.status)
                self.registration = None
                error: ServerError = exc
            except ServerError as exc:
                if not exc.retryable:
                    unexpected += 1
                    if unexpected >= UNEXPECTED_STATUS_ATTEMPTS:
                        problems.warn(key, "%s %s failed: %s; backing off", method, path,
                                      exc.message)
                        raise
                error = exc
            else:
                problems.ok(key)
                return data
            if self.stop.is_set() and attempts is None:
                raise Stopping(f"stopped during {method} {path}") from error
            delay = policy.next_delay(error.retry_after)
            if delay is None:
                raise error
            problems.warn(key, "%s %s failed: %s; retrying with backoff (now %.1f s)", method,
                          path, error.message, delay)
            if self.stop.wait(delay) and attempts is None:
                raise Stopping(f"stopped during {method} {path}") from error

    def _request(self, method: str, path: str, body: dict[str, Any] | None, *,
                 query: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                 timeout: float = p.HTTP_TIMEOUT_SECONDS) -> dict[str, Any]:
        url = self.config.api_base_url + path + (f"?{urlencode(query)}" if query else "")
        all_headers = {"Accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            response = send(method, url, headers=all_headers, body=payload, timeout=timeout,
                            on_connection=self._track)
            with response:
                raw = response.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ServerError(redact(f"cannot reach the control plane: "
                                     f"{exc.__class__.__name__}: {exc}")) from exc
        finally:
            self._conn = None
        status = response.status
        if status in (401, 403):
            raise Unauthorized(f"HTTP {status}", status=status)
        if status >= 300:
            raise ServerError(redact(f"HTTP {status}: {_error_text(raw)}"), status=status,
                              retry_after=parse_retry_after(response.header("Retry-After")))
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            # A proxy's HTML page, a cut body: transient as far as the agent can tell.
            raise ServerError(f"{method} {path}: response is not JSON") from exc
        if not isinstance(data, dict):
            problems.warn(f"{method} {path} shape", "%s %s answered JSON that is not an object; "
                          "using an empty answer", method, path)
            return {}
        return data


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data))
            if isinstance(err, dict):
                return str(err.get("message", err))[:300]
            return str(err)[:300]
    except ValueError:
        pass
    return raw[:300].decode("utf-8", "replace")
