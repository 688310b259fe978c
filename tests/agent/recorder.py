"""An HTTP proxy between a real agent and a real server that records agent requests.

Tests read what the agent sent (a status's ``verification``, a heartbeat's inventory)
and may add fields to the server's answers (``staticDepIds``) before the agent sees them.
Real sockets both ways; the server answers everything.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]


class Recorder:
    """``url`` is the API base the agent gets; ``calls`` holds (path, request body)."""

    def __init__(self, server_root: str) -> None:
        self.upstream = urlsplit(server_root)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.rewrite: Rewrite | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                recorder.forward(self)

            def do_POST(self) -> None:
                recorder.forward(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api"

    def __enter__(self) -> Recorder:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self, path_end: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for path, body in self.calls if path.split("?")[0].endswith(path_end)]

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else None
        if raw:
            with self.lock:
                self.calls.append((handler.path, json.loads(raw)))
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("host", "connection")}
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1",
                                          self.upstream.port, timeout=90)
        try:
            conn.request(handler.command, handler.path, body=raw, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            status = answer.status
            content_type = answer.getheader("Content-Type") or "application/json"
        finally:
            conn.close()
        if self.rewrite is not None and status == 200 and data:
            doc = json.loads(data)
            if isinstance(doc, dict):
                data = json.dumps(self.rewrite(handler.path, doc)).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
