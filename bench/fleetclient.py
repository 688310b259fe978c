"""A lean HTTP/1.1 keep-alive client on asyncio protocols, for simulating thousands of agents.

httpx costs ~10x more CPU per request; on a 2-core box the simulator's CPU is
taken from the server under test, so requests are pre-encoded bytes and only
the status line, Content-Length and (when needed) the body are parsed.
"""

from __future__ import annotations

import asyncio
from collections import deque


class HttpError(Exception):
    """The connection failed or the answer could not be parsed."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._try_parse()

    def _try_parse(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            self.waiter.set_exception(HttpError(f"bad status line: {head[:40]!r}"))
            return
        start = head_end + 4
        cl = head.find(b"\r\ncontent-length:")
        if cl >= 0:
            eol = head.find(b"\r\n", cl + 2)
            length = int(head[cl + 17: eol if eol >= 0 else None])
            if len(self.buf) - start < length:
                return
            body = bytes(self.buf[start:start + length])
            del self.buf[:start + length]
        elif b"transfer-encoding: chunked" in head:
            parsed = _dechunk(self.buf, start)
            if parsed is None:
                return
            body, end = parsed
            del self.buf[:end]
        else:
            body = b""
            del self.buf[:start]
        self.waiter.set_result((status, body))


def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpError("timeout"))


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2: eol + 2 + size]
        pos = eol + 2 + size + 2
        if size == 0:
            return bytes(out), pos


class Pool:
    """Up to `size` keep-alive connections to one host; requests wait for a free one.

    Like a reverse proxy in front of the control plane: thousands of agents,
    a bounded set of upstream connections.
    """

    def __init__(self, host: str, port: int, size: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.size, self.timeout = host, port, size, timeout
        self._idle: deque[_Conn] = deque()
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.host_header = f"{host}:{port}".encode()

    async def _acquire(self) -> _Conn:
        while True:
            while self._idle:
                conn = self._idle.popleft()
                if not conn.closed:
                    return conn
                self._count -= 1
            if self._count < self.size:
                self._count += 1
                try:
                    loop = asyncio.get_running_loop()
                    _, conn = await loop.create_connection(_Conn, self.host, self.port)
                except OSError as exc:
                    self._count -= 1
                    raise HttpError(f"connect: {exc}") from exc
                return conn
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    def _release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and not conn.closed:
            self._idle.append(conn)
        else:
            self._count -= 1
            if conn.transport is not None:
                conn.transport.close()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: bytes = b"") -> tuple[int, bytes]:
        """Send one request; answers (status, body). Raises HttpError."""
        req = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode(), path.encode(), self.host_header, headers)
        if body is not None:
            req += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(body), body)
        else:
            req += b"\r\n"
        conn = await self._acquire()
        ok = False
        loop = asyncio.get_running_loop()
        # A timer rather than asyncio.wait_for, which wraps every request in a task:
        # the simulator's CPU is taken from the server under test.
        waiter = conn.waiter = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            assert conn.transport is not None
            conn.transport.write(req)
            result = await waiter
            ok = True
            return result
        finally:
            timer.cancel()
            conn.waiter = None
            self._release(conn, ok)

    def close(self) -> None:
        while self._idle:
            conn = self._idle.popleft()
            if conn.transport is not None:
                conn.transport.close()
