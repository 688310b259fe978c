"""The agent fast lane: empty v1 polls and unchanged heartbeats answered before FastAPI.

At 10,000 v1 agents the control plane takes ~2,000 queue polls and ~330
heartbeats a second, and nearly all of them ask or say nothing new (issue 5).
Through FastAPI's middleware, routing and dependency machinery each costs about
0.6 ms of CPU here, more than the whole budget of a 2-core machine. This pure
ASGI layer answers the ones the replica's memos (`depman.core.hints`) can answer:

- `GET /api/dependencies/queue` of an instance known to have nothing queued;
- `POST /api/dependencies/heartbeat` whose inventory digest and failed list
  match the memo of a live instance with nothing downloading: the beat goes to
  the write-behind buffer (`depman.core.beats`). Such a beat changes nothing a
  pending job could use; job completions, new instances and the sweep place those.

The request is validated by the same Pydantic model and checked against the same
token hash as in the handlers. Anything else, or anything unusual (a repeated or
odd query parameter, a body that does not validate, no memo), goes on to FastAPI
unchanged, which answers it, errors included, as before.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from depman.core.beats import PendingBeat
from depman.core.clock import utcnow
from depman.core.instances import hash_token
from depman.core.inventory import inventory, inventory_digest
from depman.server.auth import bearer_token
from depman.server.schemas.agent import HeartbeatRequest
from depman.server.state import ServerState

log = logging.getLogger(__name__)
QUEUE_PATH = "/api/dependencies/queue"
HEARTBEAT_PATH = "/api/dependencies/heartbeat"
# Bigger heartbeats (tens of thousands of deps) are left to FastAPI's own limits.
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_ID_CHARS = 200
MAX_LIMIT = 1000
JSON_HEADERS = [(b"content-type", b"application/json")]


def empty_poll_answer(state: ServerState, instance_id: str, token: str | None) -> bytes | None:
    """The memo answer when the instance has nothing queued and the token is known good."""
    hints = state.hub.hints
    answer = hints.empty_answer(instance_id)
    if answer is None or not token or not hints.token_matches(instance_id, hash_token(token)):
        return None
    return answer


def unchanged_beat_answer(
    state: ServerState, body: HeartbeatRequest, token: str | None
) -> bytes | None:
    """Take an unchanged heartbeat of a live instance into the buffer; None: not one."""
    if state.settings.heartbeat_flush_seconds <= 0:
        return None
    if body.downloading_dep_ids or body.active_downloads:
        return None  # queue items and the dashboard's progress need the database now
    hints = state.hub.hints
    instance_id = body.instance_id
    memo = hints.beat_memo(instance_id)
    if (
        memo is None
        or memo.live_until <= time.monotonic()
        or tuple(body.failed_dep_ids) != memo.failed
        or not token
        or not hints.token_matches(instance_id, hash_token(token))
    ):
        return None
    hb = body.to_core()
    digest = inventory_digest(inventory(hb))
    if digest != memo.digest or not hints.extend_beat(
        instance_id, memo, state.policy.live_ttl_seconds
    ):
        return None
    state.beats.add(
        instance_id,
        PendingBeat(
            at=utcnow(),
            digest=digest,
            disk_total_bytes=hb.disk_total_bytes,
            disk_free_bytes=hb.disk_free_bytes,
            disk_used_bytes=hb.disk_used_bytes,
            dynamic_bytes_used=hb.dynamic_bytes_used,
            queue_depth=hb.queue_depth,
        ),
    )
    return memo.answer


def poll_instance_id(query_string: bytes) -> str | None:
    """The instanceId of a plain v1 poll (no wait, valid limit); None: leave it to FastAPI."""
    params = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    args = dict(params)
    if len(args) != len(params):
        return None
    instance_id = args.get("instanceId")
    if not instance_id or len(instance_id) > MAX_ID_CHARS:
        return None
    limit = args.get("limit")
    if limit is not None and not (
        limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT
    ):
        return None
    wait = args.get("waitSeconds")
    if wait is not None:
        try:
            if not math.isfinite(float(wait)) or float(wait) != 0:
                return None
        except ValueError:
            return None
    return instance_id


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in (b"authorization", b"content-type", b"content-length"):
            if name in found:
                found[b"repeated"] = b"1"
            found[name] = value
    return found


class AgentFastLane:
    """ASGI middleware in front of the FastAPI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, state: ServerState, metrics: Any) -> None:
        self.app = app
        self.state = state
        self._poll_timer = metrics.latency.labels("GET", QUEUE_PATH, "200")
        self._beat_timer = metrics.latency.labels("POST", HEARTBEAT_PATH, "200")
        self._poll_count = metrics.memo_answers.labels("queue")
        self._beat_count = metrics.memo_answers.labels("heartbeat")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == QUEUE_PATH and method == "GET":
                start = time.perf_counter()
                answer = self._poll(scope)
                if answer is not None:
                    await _reply(send, answer)
                    self._poll_timer.observe(time.perf_counter() - start)
                    self._poll_count.inc()
                    return
            elif path == HEARTBEAT_PATH and method == "POST":
                start = time.perf_counter()
                headers = _headers(scope)
                body = await _read_body(headers, receive)
                if body is not None:
                    answer = self._heartbeat(headers, body)
                    if answer is not None:
                        await _reply(send, answer)
                        self._beat_timer.observe(time.perf_counter() - start)
                        self._beat_count.inc()
                        return
                    receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _poll(self, scope: Scope) -> bytes | None:
        instance_id = poll_instance_id(scope.get("query_string", b""))
        if instance_id is None:
            return None
        headers = _headers(scope)
        if b"repeated" in headers:
            return None
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        return empty_poll_answer(self.state, instance_id, token)

    def _heartbeat(self, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json" or b"repeated" in headers:
            return None
        try:
            parsed = HeartbeatRequest.model_validate_json(body)
        except ValidationError:
            return None  # FastAPI answers the 422
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        try:
            return unchanged_beat_answer(self.state, parsed, token)
        except Exception:  # never fail a request the handler could still answer
            log.exception("fast lane: heartbeat left to the handler")
            return None


async def _read_body(headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
    """The whole body when it declares a length within MAX_BODY_BYTES; else None (unread)."""
    length = headers.get(b"content-length", b"")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away; the app's receive says so again
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, answer: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})
