"""The gateway's ASGI front: every agent request is parsed and answered here, before FastAPI.

Through FastAPI's middleware, routing and dependency machinery an agent request
costs about 0.6 ms more CPU, more than the rest of its answer when the memos
answer it; at 10,000 agents that is most of a core. This front sits behind the
request guard (`server/guard.py`: body limits, control characters) and the
latency timer (`api/metrics.LatencyMiddleware`, which reads the route template
set here), in front of FastAPI. For an agent path it parses the request once
(`requests.py`) and hands it to the pipeline (`pipeline.py`); a request that does
not parse and every error of the pipeline are answered in the API's one error
shape (`server/errors.response_for`). The FastAPI routes of these paths only
document them in `/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
from depman.server.schemas.agent import HeartbeatRequest, RegisterRequest, StatusRequest

JOB_CHANNEL_PREFIX = "/api/agent/"
JOB_CHANNEL_ROUTE = "/api/agent/{rest:path}"  # the latency label
JOB_CHANNEL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class Route:
    """One agent endpoint as the front takes it: a query or a JSON body, and its pipeline call."""

    method: str
    endpoint: str  # metrics label
    path: str  # the latency label (`LatencyMiddleware` reads `scope["route"].path`)
    call: Callable[[Pipeline, Caller, Any], Awaitable[Answer]]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None


ROUTES = {
    route.path: route
    for route in (
        Route(
            "POST",
            "register",
            "/api/dependencies/register",
            Pipeline.register,
            body=RegisterRequest,
        ),
        Route("GET", "queue", "/api/dependencies/queue", Pipeline.poll, query=PollQuery),
        Route(
            "POST",
            "heartbeat",
            "/api/dependencies/heartbeat",
            Pipeline.heartbeat,
            body=HeartbeatRequest,
        ),
        Route("POST", "status", "/api/dependencies/status", Pipeline.status, body=StatusRequest),
        Route(
            "GET",
            "queue_item",
            "/api/dependencies/queue-item",
            Pipeline.item_check,
            query=ItemQuery,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Label:
    """A route template, as the latency timer reads it."""

    path: str


JOB_CHANNEL_LABEL = Label(JOB_CHANNEL_ROUTE)


class AgentGateway:
    """ASGI middleware in front of the FastAPI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            route = ROUTES.get(path)
            if route is not None and route.method == method:
                scope["route"] = route
                await self._agent_request(route, scope, receive, send)
                return
            if path.startswith(JOB_CHANNEL_PREFIX) and method in JOB_CHANNEL_METHODS:
                scope["route"] = JOB_CHANNEL_LABEL
                await _send_answer(send, self.pipeline.no_job_channel())
                return
        await self.app(scope, receive, send)

    async def _agent_request(
        self, route: Route, scope: Scope, receive: Receive, send: Send
    ) -> None:
        front = read_front(scope)
        try:
            parsed: BaseModel
            if route.query is not None:
                parsed = parse_query(route.query, scope.get("query_string", b""))
            else:
                assert route.body is not None
                body = await _read_body(receive)
                if body is None:
                    return  # the client went away: nobody to answer
                parsed = parse_body(route.body, body, json_body=front.json_body)
            answer = await route.call(self.pipeline, front.caller, parsed)
        except Exception as exc:
            await response_for(exc)(scope, receive, send)
        else:
            await _send_answer(send, answer)


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
