"""A small HTTP layer over http.client: per-hop redirect checks, scoped auth, redacted URLs."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import urljoin, urlsplit

from .errors import SERVER, DomainNotAllowed, DownloadError, InvalidItem, NotTheFile
from .redact import redact_url, register_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Content types of pages, never of a model file: a login form, an "Unauthorized" JSON.
PAGE_TYPES = ("text/html", "application/json", "application/problem+json", "text/json")
MAX_REDIRECTS = 10
USER_AGENT = "depman-agent"


__all__ = ["redact_url"]  # re-exported: one redaction for the whole agent


def check_url(url: str) -> None:
    """Refuse, before any traffic, a URL http.client would choke on (and quote whole)."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidItem(f"Invalid URL (contains a space or a control character): "
                          f"{redact_url(url)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise InvalidItem(f"Invalid URL ({exc}): {redact_url(url)}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidItem(f"Unsupported URL scheme in {redact_url(url)}")
    if not parts.hostname:
        raise InvalidItem(f"URL without a host: {redact_url(url)}")


def host_allowed(host: str, domains: Sequence[str]) -> bool:
    """True when host equals one of the domains or is a subdomain of one."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): auth is sent only where this equals the catalog URL's."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


def classify_status(response: Response) -> DownloadError:
    """The error for a non-success answer; 403/416 are retried via a fresh redirect."""
    status, where = response.status, redact_url(response.url)
    retry_after = parse_retry_after(response.header("Retry-After"))
    if status in (403, 416):
        # Hugging Face / Civitai signed CDN URLs expire: ask the catalog URL again.
        return DownloadError(f"HTTP {status} from {where} (expired signed URL?)",
                             category=SERVER, status=status)
    if status in (408, 429) or status >= 500:
        reason = "http_429" if status == 429 else "http_5xx" if status >= 500 else None
        return DownloadError(f"HTTP {status} from {where}", retry_after=retry_after,
                             category=SERVER, status=status, reason=reason)
    hint = " (check the token)" if status == 401 else ""
    return DownloadError(f"HTTP {status} from {where}{hint}", retryable=False, category=SERVER,
                         status=status)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 10-19/100`` → (10, 19, 100); total None for ``*``."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        first, _, last = span.partition("-")
        return int(first), int(last), None if total.strip() == "*" else int(total)
    except ValueError:
        return None


def check_body(response: Response) -> None:
    """Refuse a success answer whose body is a page, not a file (NotTheFile).

    Civitai answers 200 with a login page or an "Unauthorized" JSON when a token
    is missing or expired; no model file is served as HTML or JSON.
    """
    kind = (response.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind in PAGE_TYPES:
        raise NotTheFile(f"{redact_url(response.url)} answered {response.status} with a "
                         f"{kind} page, not the file")


class ConnectionPool:
    """Idle keep-alive connections of one thread, one per (scheme, host, port).

    Not shared between threads: each download worker owns one, so a piece can
    reuse the connection of the last one (no new TCP/TLS handshake, no slow start).
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self.reused = 0

    def take(self, url: str) -> http.client.HTTPConnection | None:
        return self._idle.pop(origin_of(url), None)

    def put(self, url: str, conn: http.client.HTTPConnection) -> None:
        old = self._idle.pop(origin_of(url), None)
        if old is not None:
            old.close()
        self._idle[origin_of(url)] = conn

    def close(self) -> None:
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()


@dataclass
class Response:
    """An open response; read the body with ``read`` and always ``close`` it.

    With a ``pool``, a response whose body was read to the end hands its
    connection back for the next request instead of closing it.
    """

    status: int
    url: str
    raw: http.client.HTTPResponse
    conn: http.client.HTTPConnection
    pool: ConnectionPool | None = None

    def header(self, name: str) -> str | None:
        return self.raw.getheader(name)

    def read(self, amount: int | None = None) -> bytes:
        return self.raw.read(amount)

    def read_some(self, amount: int) -> bytes:
        """Up to ``amount`` bytes, whatever has arrived (b"" at the end of the body).

        Progress (and the resume sidecar) advance with what arrived, not per full chunk.
        """
        return self.raw.read1(amount)

    def read_into(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from the body (less only at its end, 0 after it).

        No allocation per read: with ``read_some`` every 1 MiB bytes object
        fragmented the heaps of eight download threads (+25 MiB peak RSS).
        """
        return self.raw.readinto(buffer)

    def close(self) -> None:
        # Only a body read to its last byte leaves the connection at a request
        # boundary (read1 counts ``length`` down to 0 but does not mark it closed).
        raw = self.raw
        reusable = (self.pool is not None and not raw.will_close
                    and (raw.isclosed() or raw.length == 0))
        try:
            self.raw.close()
        finally:
            if reusable and self.pool is not None:
                self.pool.put(self.url, self.conn)
            else:
                self.conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    if parts.scheme == "http":
        return http.client.HTTPConnection(host, parts.port, timeout=timeout)
    raise DownloadError(f"Unsupported URL scheme: {parts.scheme or '(none)'}", retryable=False)


def send(method: str, url: str, *, headers: Mapping[str, str] | None = None,
         body: bytes | None = None, timeout: float = 60.0,
         on_connection: Callable[[http.client.HTTPConnection], None] | None = None,
         pool: ConnectionPool | None = None) -> Response:
    """One request, no redirects followed. Network errors propagate as OSError.

    ``on_connection`` sees the connection before the request goes out, so another
    thread can abort a long wait with ``abort_connection``. With a ``pool`` an idle
    connection to the same origin is reused when there is one.
    """
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    idle = pool.take(url) if pool is not None else None
    if idle is not None and pool is not None:
        try:
            response = _exchange(idle, method, target, body, all_headers, on_connection)
        except (ConnectionError, http.client.BadStatusLine):
            pass  # the origin closed the idle connection meanwhile: once more on a new one
        else:
            pool.reused += 1
            return Response(response.status, url, response, idle, pool)
    conn = _connect(url, timeout)
    raw = _exchange(conn, method, target, body, all_headers, on_connection)
    return Response(raw.status, url, raw, conn, pool)


def _exchange(conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
              headers: Mapping[str, str],
              on_connection: Callable[[http.client.HTTPConnection], None] | None,
              ) -> http.client.HTTPResponse:
    if on_connection is not None:
        on_connection(conn)
    try:
        conn.request(method, target, body=body, headers=dict(headers))
        return conn.getresponse()
    except BaseException:
        conn.close()
        raise


def open_url(url: str, *, headers: Mapping[str, str] | None = None,
             authorization: str | None = None, catalog_url: str | None = None,
             allowed_domains: Sequence[str] | None = None, timeout: float = 60.0,
             pool: ConnectionPool | None = None) -> Response:
    """GET ``url``, following redirects one hop at a time.

    Every hop's host is checked against ``allowed_domains`` before it is
    requested, and ``authorization`` goes only to the catalog URL's own
    scheme/host/port: Hugging Face and Civitai redirect to signed CDN URLs on
    other hosts, and the field agent leaked tokens to them. ``pool`` lets a
    download worker reuse its keep-alive connection from one piece to the next.
    """
    auth_origin = origin_of(catalog_url or url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        # Its token never reaches a log line or an error (a redirect's signature only
        # needs to be cut for a while: there is a new one on every download).
        register_url(current, lasting=current == url)
        check_url(current)
        host = urlsplit(current).hostname or ""
        if allowed_domains is not None and not host_allowed(host, allowed_domains):
            raise DomainNotAllowed(host)
        hop_headers = dict(headers or {})
        if authorization and origin_of(current) == auth_origin:
            hop_headers["Authorization"] = authorization
        response = send("GET", current, headers=hop_headers, timeout=timeout, pool=pool)
        if response.status not in REDIRECT_STATUSES:
            return response
        location = response.header("Location")
        response.close()
        if not location:
            raise DownloadError(f"Redirect without Location from {redact_url(current)}")
        current = urljoin(current, location)
    raise DownloadError(f"Too many redirects from {redact_url(url)}", retryable=False)


def abort_connection(conn: http.client.HTTPConnection | None) -> None:
    """Unblock a thread waiting on ``conn`` (used on shutdown during a long-poll)."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
