"""uvicorn's httptools protocol, sending each response in one write instead of two.

uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and the body when it sends `http.response.body`: two
`send()` calls and two TCP segments for every agent poll and heartbeat. At 10,000
agents (~2,400 requests a second) those syscalls were the largest single cost of
the server process, and of the simulator reading them. Here the writes
of one event-loop iteration are joined and sent when it ends, so a response the
app produces in one go (every agent gateway answer) goes out in one segment; a
streamed one is sent as it was produced, one write per iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: writes made in one loop iteration leave in one `write()`."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        """Queue `data`; the first write of an iteration schedules the send."""
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Send what is queued, then close."""
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, closing state, extra info, abort) is the transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """The httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)


class _TooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parser error (400, closed)."""


class GuardedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """Slow or oversized requests cannot hold a connection.

    uvicorn times out only idle keep-alive connections, and only after a first
    response: a client that connects and says nothing, or sends its header a byte
    every few seconds, would hold its connection (and a slot of the connection cap)
    forever. Here the header must arrive within `header_timeout` of the request's
    first byte (or of connecting), the body within `body_timeout` of the header,
    and the request line plus headers may not exceed `max_header_bytes`. Set by
    `configured()`.
    """

    header_timeout = 10.0
    body_timeout = 60.0
    max_header_bytes = 64 * 1024
    max_headers = 100

    _deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _header_count = 0

    @classmethod
    def configured(
        cls, *, header_timeout: float, body_timeout: float, max_header_bytes: int
    ) -> type[GuardedHttpToolsProtocol]:
        """A subclass with these limits (uvicorn instantiates the class it is given)."""
        return type(
            "ConfiguredHttpProtocol",
            (cls,),
            {
                "header_timeout": header_timeout,
                "body_timeout": body_timeout,
                "max_header_bytes": max_header_bytes,
            },
        )

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._header_count = 0
        self._arm(self.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise _TooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_bytes > self.max_header_bytes or self._header_count > self.max_headers:
            raise _TooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
