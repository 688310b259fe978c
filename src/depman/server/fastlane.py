"""The agent fast lane: the common agent requests answered before FastAPI.

At 10,000 v1 agents the control plane takes ~2,000 queue polls and ~330
heartbeats a second, and nearly all of them ask or say nothing new (issue 5).
Through FastAPI's middleware, routing and dependency machinery each costs about
0.6 ms of CPU here, more than the whole budget of a 2-core machine. This pure
ASGI layer answers, in order:

1. from the replica's memos, without the database (`server/memo_answers.py`):
   empty polls, and heartbeats that say nothing new but the time;
2. with one or two statements on a quick connection (`server/quick_lane.py`): the
   other polls, heartbeats whose inventory is unchanged, and `running` and
   `succeeded` reports, once the bearer token matches the memo'd hash.

The request is validated by the same Pydantic model and checked against the same
token hash as in the handlers. Anything else, or anything unusual (a repeated or
odd query parameter, a body that does not validate, no memo'd token), goes on to
FastAPI unchanged, which answers it, errors included, as before.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from depman.server.auth import bearer_token
from depman.server.guard import replay_body
from depman.server.memo_answers import empty_poll_answer, token_known, unchanged_beat_answer
from depman.server.quick_lane import quick_heartbeat, quick_poll, quick_status
from depman.server.schemas.agent import HeartbeatRequest, StatusRequest
from depman.server.schemas.bounds import ID_PATTERN, MAX_ID_CHARS
from depman.server.state import ServerState

log = logging.getLogger(__name__)
QUEUE_PATH = "/api/dependencies/queue"
HEARTBEAT_PATH = "/api/dependencies/heartbeat"
STATUS_PATH = "/api/dependencies/status"
# Bigger heartbeats (tens of thousands of deps) are left to FastAPI's own limits.
MAX_BODY_BYTES = 2 * 1024 * 1024
# The handler's bounds (server/schemas/bounds.py); anything else goes to FastAPI.
ID_RE = re.compile(f"{ID_PATTERN[:-2]}{{1,{MAX_ID_CHARS}}}$")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 25  # the handler's default
JSON_HEADERS = [(b"content-type", b"application/json")]


def plain_poll(query_string: bytes) -> tuple[str, int] | None:
    """(instanceId, limit) of a plain v1 poll (no wait, valid limit); None: leave it to FastAPI."""
    params = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    args = dict(params)
    if len(args) != len(params):
        return None
    instance_id = args.get("instanceId")
    if not instance_id or not ID_RE.match(instance_id):
        return None
    limit = args.get("limit")
    if limit is not None and not (
        limit.isascii() and limit.isdigit() and len(limit) <= 4 and 1 <= int(limit) <= MAX_LIMIT
    ):
        return None
    wait = args.get("waitSeconds")
    if wait is not None:
        try:
            if not math.isfinite(float(wait)) or float(wait) != 0:
                return None
        except ValueError:
            return None
    return instance_id, int(limit) if limit is not None else DEFAULT_LIMIT


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
        self._timers = {
            path: metrics.latency.labels(method, path, "200")
            for method, path in (
                ("GET", QUEUE_PATH),
                ("POST", HEARTBEAT_PATH),
                ("POST", STATUS_PATH),
            )
        }
        self._memo = {
            QUEUE_PATH: metrics.memo_answers.labels("queue"),
            HEARTBEAT_PATH: metrics.memo_answers.labels("heartbeat"),
        }
        self._quick = {
            QUEUE_PATH: metrics.quick_answers.labels("queue"),
            HEARTBEAT_PATH: metrics.quick_answers.labels("heartbeat"),
            STATUS_PATH: metrics.quick_answers.labels("status"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == QUEUE_PATH and method == "GET":
                if await self._answer_poll(scope, send):
                    return
            elif path in (HEARTBEAT_PATH, STATUS_PATH) and method == "POST":
                start = time.perf_counter()
                headers = _headers(scope)
                body = await _read_body(headers, receive)
                if body is not None:
                    if await self._answer_report(scope, headers, body, send, start):
                        return
                    receive = replay_body(body, receive)
        await self.app(scope, receive, send)

    async def _answer_poll(self, scope: Scope, send: Send) -> bool:
        start = time.perf_counter()
        poll = plain_poll(scope.get("query_string", b""))
        headers = _headers(scope)
        if poll is None or b"repeated" in headers:
            return False
        instance_id, limit = poll
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        answer = empty_poll_answer(self.state, instance_id, token)
        counter = self._memo[QUEUE_PATH]
        if answer is None and token_known(self.state, instance_id, token):
            answer = await self._quick_call(quick_poll, self.state, instance_id, limit)
            counter = self._quick[QUEUE_PATH]
        if answer is None:
            return False
        await _reply(send, answer)
        self._timers[QUEUE_PATH].observe(time.perf_counter() - start)
        counter.inc()
        return True

    async def _answer_report(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes, send: Send, start: float
    ) -> bool:
        path = scope["path"]
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json" or b"repeated" in headers:
            return False
        model: type[BaseModel] = HeartbeatRequest if path == HEARTBEAT_PATH else StatusRequest
        try:
            parsed: Any = model.model_validate_json(body)
        except ValidationError:
            return False  # FastAPI answers the 422
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        answer = None
        counter = self._memo.get(path)
        if path == HEARTBEAT_PATH:
            try:
                answer = unchanged_beat_answer(self.state, parsed, token)
            except Exception:  # never fail a request the handler could still answer
                log.exception("fast lane: heartbeat left to the handler")
        if answer is None and token_known(self.state, parsed.instance_id, token):
            if path == HEARTBEAT_PATH:
                answer = await self._quick_call(quick_heartbeat, self.state, parsed, scope)
            else:
                answer = await self._quick_call(quick_status, self.state, parsed)
            counter = self._quick[path]
        if answer is None or counter is None:
            return False
        await _reply(send, answer)
        self._timers[path].observe(time.perf_counter() - start)
        counter.inc()
        return True

    @staticmethod
    async def _quick_call(function: Any, *args: Any) -> bytes | None:
        try:
            answer: bytes | None = await run_in_threadpool(function, *args)
        except Exception:  # the handler answers, errors included (503 when the store is down)
            log.exception("fast lane: %s left to the handler", function.__name__)
            return None
        return answer


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


async def _reply(send: Send, answer: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})
