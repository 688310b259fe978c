"""Helpers of the hostile-input tests: raw HTTP exchanges the urllib helper cannot make."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from tests.support.server import RunningServer


def address(server: RunningServer) -> tuple[str, int]:
    """(host, port) of the server."""
    parts = urlsplit(server.root_url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def exchange(
    server: RunningServer,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request without following redirects: (status, headers, JSON or text)."""
    conn = http.client.HTTPConnection(*address(server), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        found = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return resp.status, found, parsed


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the one response a raw socket gets (the server closes after it)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_error_shape(body: Any) -> None:
    """The API's error shape."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
