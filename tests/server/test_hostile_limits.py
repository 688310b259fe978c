"""Bounded before auth: body limits while reading, slow clients dropped, no wedging heartbeat."""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.server.fleet import make_fleet
from tests.server.hostile import address, assert_error_shape, read_response
from tests.support.server import RunningServer

MIB = 1024 * 1024


def _rss(server: RunningServer) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def test_a_100_mb_body_is_refused_before_it_is_read(server: RunningServer) -> None:
    before = _rss(server)
    total = 100 * MIB
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(
            b"POST /api/dependencies/heartbeat HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {total}\r\n\r\n".encode()
            + b'{"instanceId": "' + b"a" * 65536
        )
        status, body = read_response(sock)
        # The server closed the connection: the rest of the body has nowhere to go.
        sent = 65536
        with pytest.raises(OSError):
            while sent < total:
                sock.sendall(b"a" * MIB)
                sent += MIB
    assert status == 413
    answer = json.loads(body)
    assert_error_shape(answer)
    assert answer["error"]["code"] == "too_large"
    assert _rss(server) - before < 8 * MIB


def test_a_chunked_body_is_cut_off_at_the_limit(server: RunningServer) -> None:
    before = _rss(server)
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(
            b"POST /api/admin/fleet HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * MIB
        try:
            for _ in range(40):  # 40 MiB, past the 8 MiB admin limit
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # closed once the limit was passed
        status, body = read_response(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "too_large"
    assert _rss(server) - before < 24 * MIB  # the limit once, with parser slack
    status, metrics = server.request("GET", "/metrics")
    assert 'depman_requests_refused_total{reason="body_too_large"}' in metrics


@pytest.mark.server_env(DEPMAN_HEADER_TIMEOUT_SECONDS="1", DEPMAN_BODY_TIMEOUT_SECONDS="1")
def test_slow_clients_are_dropped(server: RunningServer) -> None:
    silent = [socket.create_connection(address(server)) for _ in range(20)]
    dripping = [socket.create_connection(address(server)) for _ in range(20)]
    slow_body = [socket.create_connection(address(server)) for _ in range(10)]
    for sock in dripping:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    for sock in slow_body:
        sock.sendall(
            b"POST /api/dependencies/heartbeat HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
    open_ = set(silent + dripping + slow_body)
    deadline = time.monotonic() + 30  # a generous bound; the server drops them after ~1 s
    while open_ and time.monotonic() < deadline:
        for sock in list(open_):
            sock.settimeout(0.2)
            try:
                if sock in dripping:
                    sock.sendall(b"X-Slow: 1\r\n")  # one header line at a time, forever
                if sock.recv(1024) == b"":
                    open_.discard(sock)
            except TimeoutError:
                pass
            except OSError:
                open_.discard(sock)
    for sock in silent + dripping + slow_body:
        sock.close()
    assert not open_, f"{len(open_)} slow connections still held"
    assert server.request("GET", "/metrics")[0] == 200


def test_oversized_headers_are_refused(server: RunningServer) -> None:
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        try:
            for index in range(2000):
                sock.sendall(f"X-Pad-{index}: {'p' * 100}\r\n".encode())
        except OSError:
            pass
        try:
            status: int | None = read_response(sock)[0]
        except (OSError, IndexError, ValueError):
            status = None  # reset while we were still sending: the 400 was lost with it
    # Refused and closed (the server stopped reading), never answered as a request.
    assert status in (400, None)
    assert server.request("GET", "/metrics")[0] == 200


@pytest.mark.server_env(DEPMAN_AGENT_MAX_BODY_BYTES=str(64 * MIB))
def test_a_huge_inventory_cannot_wedge_an_instance(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("wedge"))
    # 400,000 ids fit in this server's raised body limit: the list bound refuses them.
    status, body = agent.heartbeat(installedDynamicDepIds=[f"u{i}" for i in range(400_000)])
    assert status == 422, body
    assert "installedDynamicDepIds" in body["error"]["message"]
    # At the documented maximum, unknown ids are stored (bounded) and removed again.
    agent.installed_static = [f"s{i}" for i in range(10_000)]
    agent.installed_dynamic = [f"d{i}" for i in range(10_000)]
    status, body = agent.heartbeat(downloadingDepIds=[f"x{i}" for i in range(10_000)])
    assert status == 200, body
    agent.installed_static, agent.installed_dynamic = [], [fleet.deps["b"]]
    for _ in range(2):
        status, body = agent.heartbeat()
        assert status == 200, body
    status, doc = server.admin("GET", f"/admin/instances/{agent.instance_id}")
    assert doc["dependencyManager"]["installedDepIdsDynamic"] == [fleet.deps["b"]]


def test_the_default_agent_limit_refuses_a_400000_id_heartbeat(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("big"))
    status, body = agent.heartbeat(installedDynamicDepIds=[f"u{i}" for i in range(400_000)])
    assert status == 413, body
    status, body = agent.heartbeat()
    assert status == 200, body


def _anonymous_chunked_upload(server: RunningServer, path: str, total: int) -> int:
    """Send a chunked body of up to `total` bytes without a token; the status answered."""
    with socket.create_connection(address(server), timeout=60) as sock:
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"\0" * MIB
        sent = 0
        try:
            while sent < total:
                # Stop sending as soon as the server has answered.
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed while the body was still coming
        # The status line is enough: the server may keep the connection open a while.
        head = b""
        while b"\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                break
            head += data
        return int(head.split(b" ", 2)[1])


@pytest.mark.slow
def test_anonymous_chunked_build_uploads_are_refused_before_they_are_read(
    server: RunningServer,
) -> None:
    fleet = make_fleet(server, sizes={})
    path = f"/api/admin/agent-builds/{fleet.server_type}?version=anonymous"
    before = _rss(server)
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(server))
            done.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(
                pool.map(lambda _n: _anonymous_chunked_upload(server, path, 32 * MIB), range(16))
            )
    finally:
        done.set()
        watcher.join()
    assert set(statuses) <= {401, 403}, statuses
    assert peak - before < 64 * MIB, (before, peak)
    assert server.admin("GET", f"/admin/agent-builds/{fleet.server_type}")[0] == 404

    # With the admin token the same route takes a big chunked upload, streamed to a file.
    data = secrets.token_bytes(20 * MIB)
    conn = http.client.HTTPConnection(*address(server), timeout=120)
    try:
        conn.request(
            "PUT",
            f"/api/admin/agent-builds/{fleet.server_type}?version=big-1",
            body=(data[i : i + MIB] for i in range(0, len(data), MIB)),
            headers={
                "Authorization": f"Bearer {server.admin_token}",
                "Content-Type": "application/octet-stream",
            },
            encode_chunked=True,
        )
        resp = conn.getresponse()
        build = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, build
    assert build["sha256"] == hashlib.sha256(data).hexdigest()
    assert build["sizeBytes"] == len(data)
