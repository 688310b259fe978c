"""A local model origin: a stdlib threaded HTTP server streaming generated files.

Routes (every file is named by its seed and size, so the origin holds no state):

    GET|HEAD /files/{seed}/{size}/{name}      public
    GET|HEAD /private/{seed}/{size}/{name}    needs `Authorization: Bearer <token>`
    GET|HEAD /redirect/{seed}/{size}/{name}   302 to /files/... on the other host name
                                              (127.0.0.1 <-> localhost), like a CDN hop
    GET      /_stats                          {"bytesServed", "requests", "byRoute"}

`?bps=N` throttles each response to about N bytes per second (tests use it to
catch a download in flight). Single byte ranges are honoured (206 / 416).

Run it on its own: `python -m depman.demo.origin --port 0 --token T`; it prints
`depman origin listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from depman.demo.content import CHUNK_BYTES, iter_content

FILE_ROUTE_RE = re.compile(r"^/(files|private|redirect)/([A-Za-z0-9_.-]+)/(\d+)/([^/]+)$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
PUBLIC_ROUTE = "files"
PRIVATE_ROUTE = "private"
REDIRECT_ROUTE = "redirect"
THROTTLE_BLOCK_BYTES = 64 * 1024


class OriginStats:
    """Thread-safe counters of what the origin served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_served = 0
        self.requests = 0
        self.by_route: dict[str, int] = {}

    def count_request(self, route: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_route[route] = self.by_route.get(route, 0) + 1

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_served += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "bytesServed": self.bytes_served,
                "requests": self.requests,
                "byRoute": dict(self.by_route),
            }


class OriginServer(ThreadingHTTPServer):
    """The HTTP server; handlers reach the token and the counters through it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], token: str | None) -> None:
        super().__init__(address, OriginHandler)
        self.token = token
        self.stats = OriginStats()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range; None for no/unsupported header.

    Raises ValueError when the range cannot be satisfied (answered 416).
    """
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None  # multi-range or garbage: RFC 9110 lets us answer 200 with the whole file
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(0, size - length), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or start >= end:
        raise ValueError("range not satisfiable")
    return start, end


class OriginHandler(BaseHTTPRequestHandler):
    """Serves one request; see the module docstring for the routes."""

    server: OriginServer
    protocol_version = "HTTP/1.1"
    server_version = "depman-origin/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo's terminal belongs to the live view."""

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, *, send_body: bool) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/_stats":
            self._send_json(HTTPStatus.OK, self.server.stats.snapshot())
            return
        match = FILE_ROUTE_RE.match(parts.path)
        if not match:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such file: {parts.path}"})
            return
        route, seed, size_text, name = match.groups()
        self.server.stats.count_request(route)
        if route == REDIRECT_ROUTE:
            self._redirect(seed, size_text, name, parts.query)
            return
        if route == PRIVATE_ROUTE and not self._authorized():
            return
        query = parse_qs(parts.query)
        bps = int(query["bps"][0]) if "bps" in query else None
        self._send_file(seed, int(size_text), send_body=send_body, bps=bps)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "missing bearer token"})
            return False
        if self.server.token is None or header[len("Bearer ") :] != self.server.token:
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "wrong token"})
            return False
        return True

    def _redirect(self, seed: str, size_text: str, name: str, query: str) -> None:
        host = (self.headers.get("Host") or "127.0.0.1").rsplit(":", 1)[0]
        other = "localhost" if host != "localhost" else "127.0.0.1"
        location = f"http://{other}:{self.server.port}/{PUBLIC_ROUTE}/{seed}/{size_text}/{name}"
        if query:
            location += "?" + query
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_file(self, seed: str, size: int, *, send_body: bool, bps: int | None) -> None:
        try:
            byte_range = parse_range(self.headers.get("Range"), size)
        except ValueError:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = byte_range or (0, size)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if byte_range else HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{seed}-{size}"')
        if byte_range:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not send_body:
            return
        began = time.monotonic()
        sent = 0
        step = THROTTLE_BLOCK_BYTES if bps else CHUNK_BYTES
        try:
            for piece in iter_content(seed, size, start, end):
                view = memoryview(piece)
                for offset in range(0, len(view), step):
                    block = view[offset : offset + step]
                    self.wfile.write(block)
                    sent += len(block)
                    self.server.stats.add_bytes(len(block))
                    if bps:
                        ahead = sent / bps - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def file_path(route: str, seed: str, size: int, name: str) -> str:
    """The origin path of a generated file on one of the routes."""
    if route not in (PUBLIC_ROUTE, PRIVATE_ROUTE, REDIRECT_ROUTE):
        raise ValueError(f"unknown route {route!r}")
    return f"/{route}/{seed}/{size}/{name}"


@contextmanager
def run_origin_in_thread(
    host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> Iterator[OriginServer]:
    """Serve in a background thread for the duration of the block (unit tests)."""
    server = OriginServer((host, port), token)
    thread = threading.Thread(target=server.serve_forever, name="origin", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description="depman demo model origin")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="Bearer token the /private route wants.")
    args = parser.parse_args(argv)
    server = OriginServer((args.host, args.port), args.token)
    print(f"depman origin listening on http://{args.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
