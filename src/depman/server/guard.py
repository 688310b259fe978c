"""The outermost ASGI layer: refuse oversized bodies and control characters in URLs.

It runs before the agent gateway, FastAPI, parsing and authentication, so an
anonymous client cannot make the server buffer or parse more than a small bound:

- agent routes take bodies up to `agent_max_body_bytes`; every other route up to
  `PREAUTH_BODY_BYTES` unless the request carries the admin or submit token as
  its bearer, and then up to its own limit (`admin_max_body_bytes`, the agent
  build maximum for build uploads). A wrong or missing token keeps the small
  bound, so nothing big is read before authentication;
- a declared `Content-Length` over the limit is answered 413 and the connection
  closed. Up to `DRAIN_BYTES` past the limit the body is read and dropped first (chunk by chunk,
  nothing kept), so the client, still sending, gets the answer rather than a
  reset; beyond that not a byte of it is read;
- a body without a length (chunked) is not read here: the bytes the app reads
  are counted, and one byte past the limit ends the request with 413. An app
  that refuses the caller first (an upload route checks its token before it
  reads) never reads the body at all;
- a path or query that decodes to a control character (`%00`, a newline) is
  answered 400: no id with one exists, and the database or the log would choke
  on it further in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from depman.core.agent_builds import MAX_BUILD_BYTES
from depman.server.errors import error_body

AGENT_PREFIX = "/api/dependencies/"
BUILD_UPLOAD_PREFIX = "/api/admin/agent-builds/"
DRAIN_BYTES = 16 * 1024 * 1024
# What an unauthenticated caller may send to a non-agent route: every dashboard
# form and a login fit many times over.
PREAUTH_BODY_BYTES = 64 * 1024
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


def _authorization(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class RequestGuard:
    """ASGI middleware (see the module docstring); `refused` counts refusals by reason.

    `operator` tells whether an `Authorization` header holds the admin or submit token.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        agent_max: int,
        other_max: int,
        refused: Any,
        operator: Callable[[str | None], bool],
    ) -> None:
        self.app = app
        self.agent_max = agent_max
        self.other_max = other_max
        self.operator = operator
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
        anonymous = (
            limit > PREAUTH_BODY_BYTES
            and not path.startswith(AGENT_PREFIX)
            and not self.operator(_authorization(scope))
        )
        if anonymous:
            limit = PREAUTH_BODY_BYTES
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
                await self._refuse(send, limit, anonymous)
                return
        elif chunked:
            await self._counted(scope, receive, send, limit, anonymous)
            return
        await self.app(scope, receive, send)

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, limit: int, anonymous: bool
    ) -> None:
        """Run the app on a body of unknown length, ending it with 413 past `limit`.

        Past the limit the app is told the client left; whatever it answers (or
        raises) then is dropped, and the refusal is sent in its place.
        """
        size = 0
        over = False
        started = False

        async def counted_receive() -> Message:
            nonlocal size, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send, limit, anonymous)

    async def _refuse(self, send: Send, limit: int, anonymous: bool) -> None:
        self._too_large.inc()
        if anonymous:
            message = (
                f"the request body exceeds {limit} bytes, the most read without "
                "the admin or submit token"
            )
        else:
            message = f"the request body exceeds this route's limit of {limit} bytes"
        await send_error(send, 413, "too_large", message)


async def _drain(receive: Receive) -> None:
    """Read the body to its end, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
