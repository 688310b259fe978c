"""Small misbehaving servers on 127.0.0.1 for agent fault tests (real sockets, real HTTP).

``FakeControlPlane`` speaks enough of protocol v1 for an agent to run against it and
answers queue (and other) calls from a script, so a test can send 302/404/413,
``"items": null`` or malformed items. ``EndlessOrigin`` streams a body that never ends.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

# (status, body, extra headers); a dict or list body is sent as JSON.
Answer = tuple[int, Any, dict[str, str]]


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    return status, body, {k.replace("_", "-"): v for k, v in headers.items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any


class FakeControlPlane:
    """Register, heartbeat, status and queue; scripted answers are used first, in order.

    ``statuses`` and ``heartbeats`` hold only the bodies answered with a 2xx.
    """

    def __init__(self, *, profile: dict[str, Any] | None = None, long_poll: bool = True) -> None:
        self.profile = profile or {}
        self.long_poll = long_poll
        self.scripts: dict[str, deque[Answer]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.statuses: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []  # served by every default queue answer
        self.changed = threading.Condition(self.lock)
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def script(self, path: str, *answers: Answer) -> None:
        with self.lock:
            self.scripts.setdefault(path, deque()).extend(answers)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.requests if p == path)

    def statuses_of(self, item_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.statuses if s.get("itemId") == item_id]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        with self.changed:
            self.changed.wait_for(lambda: _unlocked(predicate, self), timeout)
        return predicate()

    def __enter__(self) -> FakeControlPlane:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- answers --------------------------------------------------------
    def default(self, path: str, body: dict[str, Any] | None) -> Answer:
        if path.endswith("/register"):
            return answer(200, {"instanceId": "fake-1", "agentToken": "tok-fake-123456",
                                "profile": self.profile,
                                "capabilities": {"longPoll": self.long_poll}})
        if path.endswith("/queue"):
            with self.lock:
                items = [i for i in self.items if not any(
                    s.get("itemId") == i.get("itemId") and s.get("state") in (
                        "succeeded", "failed") for s in self.statuses)]
            return answer(200, {"items": items})
        return answer(200, {"ok": True})

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> Answer:
        with self.changed:
            self.requests.append((method, path, body))
            queue = self.scripts.get(path)
            scripted = queue.popleft() if queue else None
        result = scripted or self.default(path, body)
        with self.changed:
            # Only what the "server" accepted counts as received.
            if result[0] < 300 and body is not None:
                if path.endswith("/status"):
                    self.statuses.append(body)
                if path.endswith("/heartbeat"):
                    self.heartbeats.append(body)
            self.changed.notify_all()
        return result


def _unlocked(predicate: Callable[[], Any], plane: FakeControlPlane) -> Any:
    # wait_for holds the condition's lock; the predicates take it again.
    plane.lock.release()
    try:
        return predicate()
    finally:
        plane.lock.acquire()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        try:
            data = json.loads(self.rfile.read(length))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _go(self) -> None:
        path = urlsplit(self.path).path
        status, body, headers = self.server.owner.handle(self.command, path, self._body())
        raw = body if isinstance(body, bytes) else (
            b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _go


class EndlessOrigin:
    """GET anything: 200 with no Content-Length and bytes until the client hangs up."""

    def __init__(self) -> None:
        self.sent = 0
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _EndlessHandler)
        self.server.owner = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> EndlessOrigin:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()


class _EndlessHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection does: never
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        block = b"\x5a" * 65536
        owner = self.server.owner
        try:
            while True:
                self.wfile.write(block)
                with owner.lock:
                    owner.sent += len(block)
        except OSError:
            return
