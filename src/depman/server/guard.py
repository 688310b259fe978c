"""The outermost ASGI layer: refuse oversized bodies and control characters in URLs.

It runs before the agent gateway, FastAPI, parsing and authentication, so an
anonymous client cannot make the server buffer or parse more than a route's
limit (agent routes `agent_max_body_bytes`, the rest `admin_max_body_bytes`):

- a declared `Content-Length` over the limit is answered 413 and the connection
  closed. Up to `DRAIN_BYTES` past the limit the body is read and dropped first (chunk by chunk,
  nothing kept), so the client, still sending, gets the answer rather than a
  reset; beyond that not a byte of it is read;
- a body without a length (chunked) is read up to the limit and handed on; one
  byte more and it is answered 413;
- a path or query that decodes to a control character (`%00`, a newline) is
  answered 400: no id with one exists, and the database or the log would choke
  on it further in.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from depman.core.agent_builds import MAX_BUILD_BYTES
from depman.server.errors import error_body

AGENT_PREFIX = "/api/dependencies/"
BUILD_UPLOAD_PREFIX = "/api/admin/agent-builds/"
DRAIN_BYTES = 16 * 1024 * 1024
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def body_limit(path: str, agent_max: int, other_max: int) -> int:
    """The body limit of a route: agent protocol routes have the small one; agent
    build uploads (admin only, read with their own limit) the build's maximum."""
    if path.startswith(AGENT_PREFIX):
        return agent_max
    if path.startswith(BUILD_UPLOAD_PREFIX):
        return max(other_max, MAX_BUILD_BYTES)
    return other_max


def url_has_controls(path: str, query_string: bytes) -> bool:
    """Whether the decoded path or query holds a control character."""
    if _CONTROL_TEXT.search(path):
        return True
    return bool(query_string) and bool(_CONTROL_BYTES.search(unquote_to_bytes(query_string)))


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """The API's error shape, then the connection closes (its body may be unread)."""
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware (see the module docstring); `refused` counts refusals by reason."""

    def __init__(self, app: ASGIApp, *, agent_max: int, other_max: int, refused: Any) -> None:
        self.app = app
        self.agent_max = agent_max
        self.other_max = other_max
        self._too_large = refused.labels("body_too_large")
        self._bad_url = refused.labels("control_characters")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if url_has_controls(path, scope.get("query_string", b"")):
            self._bad_url.inc()
            await send_error(send, 400, "bad_request", "the URL holds control characters")
            return
        limit = body_limit(path, self.agent_max, self.other_max)
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                # Two different lengths: refused below as not a number.
                declared = b"conflicting" if declared not in (None, value) else value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None:
            if not declared.isdigit():
                await send_error(send, 400, "bad_request", "invalid Content-Length")
                return
            if int(declared) > limit:
                if int(declared) <= limit + DRAIN_BYTES:
                    await _drain(receive)
                await self._refuse(send, limit)
                return
        elif chunked:
            body = await _read_within(receive, limit)
            if body is None:
                await self._refuse(send, limit)
                return
            receive = replay_body(body, receive)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, limit: int) -> None:
        self._too_large.inc()
        await send_error(
            send, 413, "too_large", f"the request body exceeds this route's limit of {limit} bytes"
        )


async def _read_within(receive: Receive, limit: int) -> bytes | None:
    """The whole body if it is at most `limit` bytes; None once it grows past it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left; the app's receive says so again
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive: Receive) -> None:
    """Read the body to its end, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
