"""The gateway's ASGI front: agent requests go to the pipeline before FastAPI routes them.

Through FastAPI's middleware, routing and dependency machinery an agent request
costs about 0.6 ms more CPU, more than the rest of its answer when the memos
answer it; at 10,000 agents that is most of a core. This front sits behind the
request guard (`server/guard.py`: body limits, control characters) and in front
of FastAPI. For an agent path it parses the request (`requests.py`) and hands it
to the pipeline (`pipeline.py`), answering its errors in the API's one error
shape (`server/errors.response_for`). A request it cannot parse exactly as FastAPI
would (another content type, invalid input) goes on to FastAPI unchanged, body
included, where the route parses it and calls the same pipeline;
`depman_agent_left_to_fastapi_total{endpoint}` counts those.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from depman.server.agent_gateway.answers import Answer
from depman.server.agent_gateway.pipeline import Pipeline
from depman.server.agent_gateway.requests import (
    Caller,
    ItemQuery,
    PollQuery,
    parse_body,
    parse_query,
    read_front,
)
from depman.server.errors import response_for
from depman.server.guard import replay_body
from depman.server.schemas.agent import HeartbeatRequest, RegisterRequest, StatusRequest

if TYPE_CHECKING:
    from depman.server.metrics import Metrics

JOB_CHANNEL_PREFIX = "/api/agent/"
JOB_CHANNEL_ROUTE = "/api/agent/{rest:path}"  # its FastAPI route, as the latency label
JOB_CHANNEL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class Route:
    """One agent endpoint as the front takes it: a query or a JSON body, and its pipeline call."""

    method: str
    endpoint: str  # metrics label
    call: Callable[[Pipeline, Caller, Any], Awaitable[Answer]]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None


ROUTES = {
    "/api/dependencies/register": Route(
        "POST", "register", Pipeline.register, body=RegisterRequest
    ),
    "/api/dependencies/queue": Route("GET", "queue", Pipeline.poll, query=PollQuery),
    "/api/dependencies/heartbeat": Route(
        "POST", "heartbeat", Pipeline.heartbeat, body=HeartbeatRequest
    ),
    "/api/dependencies/status": Route("POST", "status", Pipeline.status, body=StatusRequest),
    "/api/dependencies/queue-item": Route(
        "GET", "queue_item", Pipeline.item_check, query=ItemQuery
    ),
}


class AgentGateway:
    """ASGI middleware in front of the FastAPI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, pipeline: Pipeline, metrics: Metrics) -> None:
        self.app = app
        self.pipeline = pipeline
        self._latency = metrics.latency
        self._timers: dict[tuple[str, str, int], Any] = {}
        self._left = {
            route.endpoint: metrics.left_to_fastapi.labels(route.endpoint)
            for route in ROUTES.values()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            route = ROUTES.get(path)
            if route is not None and route.method == method:
                await self._agent_request(route, scope, receive, send)
                return
            if path.startswith(JOB_CHANNEL_PREFIX) and method in JOB_CHANNEL_METHODS:
                start = time.perf_counter()
                answer = self.pipeline.no_job_channel()
                await _send_answer(send, answer)
                self._observe(method, JOB_CHANNEL_ROUTE, answer.status, start)
                return
        await self.app(scope, receive, send)

    async def _agent_request(
        self, route: Route, scope: Scope, receive: Receive, send: Send
    ) -> None:
        start = time.perf_counter()
        front = read_front(scope)
        parsed: BaseModel | None = None
        if route.query is not None:
            parsed = parse_query(route.query, scope.get("query_string", b""))
        elif route.body is not None and front.json_body:
            body = await _read_body(receive)
            if body is None:
                return  # the client went away: nobody to answer
            receive = replay_body(body, receive)
            parsed = parse_body(route.body, body)
        if parsed is None:
            self._left[route.endpoint].inc()
            await self.app(scope, receive, send)
            return
        try:
            answer = await route.call(self.pipeline, front.caller, parsed)
        except Exception as exc:
            response = response_for(exc)
            await response(scope, receive, send)
            status = response.status_code
        else:
            await _send_answer(send, answer)
            status = answer.status
        self._observe(scope["method"], scope["path"], status, start)

    def _observe(self, method: str, route: str, status: int, start: float) -> None:
        key = (method, route, status)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = self._latency.labels(method, route, str(status))
        timer.observe(time.perf_counter() - start)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the guard has bounded it); None when the client goes away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_answer(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(answer.body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})
