"""A model-file origin on 127.0.0.1 for tests, the demo and benchmarks (stdlib only).

    with ModelOrigin() as origin:
        origin.add("/m/a.bin", data=b"...", redirect_host="localhost")
        url = origin.url("/m/a.bin")
        ...
        assert origin.bytes_served("/m/a.bin") < ...

Per file it can honour Range (206 + Content-Range), send an ETag, redirect to a
"CDN" on another host name (``localhost`` vs ``127.0.0.1``) with signed URLs that
can be expired, require an ``Authorization`` header, serve corrupt bytes, close
early, drop the connection once after N bytes, stall mid-body, answer errors for
the next K requests (429 with Retry-After, 503), answer 200 with a page instead of
the file (a login form, an "Unauthorized" JSON), and throttle the body. Every
request is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

CDN_PREFIX = "/_cdn"
WRITE_CHUNK = 64 * 1024


@dataclass
class OriginFile:
    """One servable file and how misbehaving the origin should be about it."""

    data: bytes | None = None
    file: Path | None = None
    etag: str | None = None
    ranges: bool = True
    redirect: str | None = None  # a path on this origin or a full URL
    redirect_host: str | None = None  # emulate a CDN: 302 to a signed URL on this host name
    require_auth: str | None = None  # exact Authorization value the catalog path wants
    corrupt: str | None = None  # "always" or "ranged" (only responses not starting at 0)
    short_body: int | None = None  # every response closes after this many bytes
    drop_after: int | None = None  # the next response closes after this many bytes (once)
    expire_after_drop: bool = False  # the drop also expires every signed URL issued so far
    rate: float | None = None  # bytes per second, per response
    errors: list[tuple[int, float | None]] = field(default_factory=list)
    redirect_status: int = 302  # 307: Civitai's answer, to a presigned R2/B2 URL
    # 200 with this body and Content-Type instead of the file (a login page, a JSON error).
    page: bytes | None = None
    page_type: str = "text/html; charset=utf-8"
    stall_after: int | None = None  # every response sends this many bytes, then nothing

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.file is not None
        return self.file.stat().st_size

    def read(self, start: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[start:start + length]
        assert self.file is not None
        with open(self.file, "rb") as f:
            f.seek(start)
            return f.read(length)


@dataclass
class RequestRecord:
    """One request as the origin saw it; ``headers`` keys are lower-case."""

    method: str
    path: str
    query: str
    host: str
    headers: dict[str, str]
    file_path: str | None = None  # the catalog path the request was for
    status: int = 0
    bytes_sent: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


class ModelOrigin:
    """A ThreadingHTTPServer on ``host``:0; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.files: dict[str, OriginFile] = {}
        self.requests: list[RequestRecord] = []
        self.lock = threading.Lock()
        self._signatures: dict[str, tuple[str, float | None]] = {}
        self._sig_counter = itertools.count(1)
        self.signed_ttl: float | None = None
        # File bodies being served right now, and the most ever served at once.
        self.serving = 0
        self.max_serving = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.released = threading.Event()  # ends every stalled response

    # -- lifecycle ------------------------------------------------------
    def start(self) -> ModelOrigin:
        origin = self

        class Handler(_Handler):
            pass

        Handler.origin = origin
        self._server = _QuietServer((self.host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="model-origin")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ModelOrigin:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "origin not started"
        return int(self._server.server_address[1])

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    # -- configuration --------------------------------------------------
    def add(self, path: str, data: bytes | None = None, *, file: Path | None = None,
            etag: str | bool | None = True, **options: object) -> OriginFile:
        """Serve ``data`` (or ``file``) at ``path``; ``etag=True`` derives a strong ETag.

        Options are the fields of ``OriginFile`` (ranges, redirect, redirect_host,
        require_auth, corrupt, short_body, drop_after, expire_after_drop, rate).
        """
        if (data is None) == (file is None):
            raise ValueError("give exactly one of data= or file=")
        entry = OriginFile(data=data, file=file, **options)  # type: ignore[arg-type]
        if etag is True:
            digest = hashlib.sha256(data if data is not None else str(file).encode())
            entry.etag = f'"{digest.hexdigest()[:16]}"'
        elif isinstance(etag, str):
            entry.etag = etag
        with self.lock:
            self.files[path] = entry
        return entry

    def fail_next(self, path: str, status: int, count: int = 1,
                  retry_after: float | None = None) -> None:
        """The next ``count`` requests for ``path`` (catalog or CDN) answer ``status``."""
        with self.lock:
            self.files[path].errors.extend([(status, retry_after)] * count)

    def expire_signatures(self) -> None:
        """Every signed CDN URL issued so far now answers 403 (like an expired S3 URL)."""
        with self.lock:
            self._signatures.clear()

    # -- inspection -----------------------------------------------------
    def requests_for(self, path: str) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.requests if r.file_path == path]

    def bytes_served(self, path: str | None = None) -> int:
        with self.lock:
            return sum(r.bytes_sent for r in self.requests
                       if path is None or r.file_path == path)

    def reset_stats(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- used by the handler --------------------------------------------
    def sign(self, path: str) -> str:
        with self.lock:
            sig = f"s{next(self._sig_counter)}"
            expires = time.monotonic() + self.signed_ttl if self.signed_ttl else None
            self._signatures[sig] = (path, expires)
            return sig

    def signature_valid(self, sig: str, path: str) -> bool:
        with self.lock:
            entry = self._signatures.get(sig)
        if entry is None or entry[0] != path:
            return False
        return entry[1] is None or time.monotonic() < entry[1]


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-body (killed agents, dropped segments) are expected."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    origin: ModelOrigin

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        record = RequestRecord("GET", parts.path, parts.query, self.headers.get("Host", ""),
                               {k.lower(): v for k, v in self.headers.items()})
        origin = self.origin
        with origin.lock:
            origin.requests.append(record)
        path, via_cdn = parts.path, False
        if path.startswith(CDN_PREFIX + "/"):
            path, via_cdn = path[len(CDN_PREFIX):], True
        record.file_path = path
        with origin.lock:
            entry = origin.files.get(path)
            error = entry.errors.pop(0) if entry and entry.errors else None
        if entry is None:
            return self._simple(record, 404)
        if error is not None:
            extra = {"Retry-After": f"{error[1]:g}"} if error[1] is not None else {}
            return self._simple(record, error[0], extra)
        if via_cdn:
            sig = parse_qs(parts.query).get("sig", [""])[0]
            if not origin.signature_valid(sig, path):
                return self._simple(record, 403)
        else:
            if entry.require_auth and self.headers.get("Authorization") != entry.require_auth:
                return self._simple(record, 401)
            if entry.redirect:
                location = entry.redirect
                if location.startswith("/"):
                    location = origin.url(location, host=self.headers.get("Host", "").split(
                        ":")[0] or None)
                return self._simple(record, entry.redirect_status, {"Location": location})
            if entry.page is not None:
                return self._simple(record, 200, {"Content-Type": entry.page_type},
                                    body=entry.page)
            if entry.redirect_host:
                sig = origin.sign(path)
                location = origin.url(f"{CDN_PREFIX}{path}?sig={sig}&token=secret-{sig}",
                                      host=entry.redirect_host)
                return self._simple(record, 302, {"Location": location})
        with origin.lock:
            origin.serving += 1
            origin.max_serving = max(origin.max_serving, origin.serving)
        try:
            self._serve(record, entry)
        finally:
            with origin.lock:
                origin.serving -= 1

    def _simple(self, record: RequestRecord, status: int,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> None:
        record.status = status
        body = f"{status}\n".encode() if body is None else body
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, record: RequestRecord, entry: OriginFile) -> None:
        total = entry.size
        start, end, status = 0, total - 1, 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if entry.ranges and wanted and (if_range is None or if_range == entry.etag):
            span = _parse_range(wanted, total)
            if span is None:
                record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            (start, end), status = span, 206
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if entry.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if entry.etag:
            self.send_header("ETag", entry.etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        limit = end - start + 1
        stalling = entry.stall_after is not None and entry.stall_after < limit
        with self.origin.lock:
            if entry.short_body is not None:
                limit = min(limit, entry.short_body)
            if entry.stall_after is not None:
                limit = min(limit, entry.stall_after)
            dropping = entry.drop_after is not None and entry.drop_after < limit
            if dropping:
                assert entry.drop_after is not None
                limit = entry.drop_after
                entry.drop_after = None
        self._write_body(record, entry, start, limit)
        if stalling:
            with contextlib.suppress(OSError):
                self.wfile.flush()
            self.origin.released.wait(60)  # the client gives up first (its stall check)
        if limit < end - start + 1:
            self.close_connection = True
            if dropping and entry.expire_after_drop:
                self.origin.expire_signatures()

    def _write_body(self, record: RequestRecord, entry: OriginFile, start: int,
                    limit: int) -> None:
        chunk = WRITE_CHUNK if entry.rate is None else max(1024, int(entry.rate / 20))
        pos = start
        while pos < start + limit:
            block = bytearray(entry.read(pos, min(chunk, start + limit - pos)))
            corrupt_at = _corrupt_offset(entry, start)
            if corrupt_at is not None and pos <= corrupt_at < pos + len(block):
                block[corrupt_at - pos] ^= 0xFF
            try:
                self.wfile.write(block)
            except OSError:
                self.close_connection = True
                return
            record.bytes_sent += len(block)
            pos += len(block)
            if entry.rate and pos < start + limit:  # the client has it all: no pause after
                time.sleep(len(block) / entry.rate)


def _corrupt_offset(entry: OriginFile, start: int) -> int | None:
    if entry.corrupt == "always":
        return entry.size // 2
    if entry.corrupt == "ranged" and start > 0:
        return start
    return None


def _parse_range(value: str, total: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → inclusive span, None if unsatisfiable."""
    if not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, total - n), total - 1) if n > 0 and total else None
        start = int(first)
        end = int(last) if last else total - 1
    except ValueError:
        return None
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)
