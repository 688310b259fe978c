"""One fill: stream a file from an upstream into the mirror, verifying sha256 and size on the way.

The bytes go straight into a multipart upload at the file's final key, part by
part, while the hash is computed; the upload is completed only when the whole
body had the catalog's size and sha256, and aborted otherwise, so no object ever
holds bytes that were not verified. An upstream that fails (status, a body that
cannot be the file, wrong size or hash, a broken connection) is left for the next.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from depman.mirror.bucket import Bucket
from depman.mirror.upstream import Upstream, UpstreamSlots

READ_CHUNK = 1024 * 1024
PROGRESS_EVERY_SECONDS = 1.0
# A body of these types is a login page or an API error, never a model file.
NOT_A_FILE_TYPES = ("text/html", "application/json", "text/plain", "application/xml")
TIMEOUT = httpx.Timeout(30.0, read=120.0)
# A 429 is waited out (Retry-After) this many times per upstream when it asks for
# no more than MAX_RETRY_AFTER seconds; a longer wait moves on to the next source.
MAX_THROTTLED_WAITS = 20
MAX_RETRY_AFTER = 60.0
DEFAULT_RETRY_AFTER = 5.0
# S3 takes at most 10,000 parts; a margin for a size the catalog has wrong.
MAX_PARTS = 9000


class FillError(Exception):
    """An upstream did not yield the file; the message names which and why."""


class Throttled(FillError):
    """The upstream answered 429: worth waiting `retry_after` seconds and asking again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"HTTP 429 (Retry-After {retry_after:g}s)")
        self.retry_after = retry_after


class FillStopped(Exception):
    """The server is shutting down: the fill is left for the next worker."""


class UpstreamBusy(Exception):
    """Every upstream's fleet-wide slots are taken: the fill waits its turn."""


@dataclass(frozen=True)
class Filled:
    """A stored object: its size and the URL that yielded it (None: it was there already)."""

    size: int
    source_url: str | None


def fill_object(
    bucket: Bucket,
    sha256: str,
    size: int | None,
    upstreams: Sequence[Upstream],
    *,
    progress: Callable[[int], None],
    stop: threading.Event,
    user_agent: str,
    slots: UpstreamSlots,
) -> Filled:
    """Store the file in the mirror from the first upstream that yields the right bytes.

    Each request holds one of its host's fleet-wide slots (`slots`) while it streams.
    """
    stored = bucket.stored_size(sha256)
    if stored is not None and (size is None or stored == size):
        return Filled(stored, None)
    if stored is not None:
        bucket.delete(sha256)  # not the catalog's size: never handed out, replaced now
    bucket.abort_stale_uploads(sha256)
    if not upstreams:
        raise FillError("no upstream URL")
    errors: list[str] = []
    busy = 0
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True,
                      headers={"User-Agent": user_agent}) as http:
        for upstream in upstreams:
            for waits in range(MAX_THROTTLED_WAITS + 1):
                with slots.take(upstream.host) as granted:
                    if not granted:
                        busy += 1
                        break
                    try:
                        done = _copy(http, bucket, sha256, size, upstream, progress, stop)
                    except Throttled as exc:
                        if waits == MAX_THROTTLED_WAITS or exc.retry_after > MAX_RETRY_AFTER:
                            errors.append(f"{upstream.host}: {exc}")
                            break
                        wait = exc.retry_after
                    except FillError as exc:
                        errors.append(f"{upstream.host}: {exc}")
                        break
                    else:
                        return Filled(done, upstream.url)
                # Waited out with the slot released: others may use the upstream meanwhile.
                if stop.wait(wait):
                    raise FillStopped()
    if busy and not errors:
        raise UpstreamBusy("every upstream is at its fleet-wide download cap")
    raise FillError("; ".join(errors))


def _copy(
    http: httpx.Client,
    bucket: Bucket,
    sha256: str,
    size: int | None,
    upstream: Upstream,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> int:
    headers = {"Authorization": upstream.authorization} if upstream.authorization else {}
    try:
        with http.stream("GET", upstream.url, headers=headers) as response:
            _check_response(response, size)
            upload = bucket.start_upload(sha256)  # only for a body that may be the file
            try:
                done = _stream_parts(response, upload.add_part, part_bytes_for(bucket, size),
                                     sha256, size, progress, stop)
                upload.complete()
            except BaseException:
                upload.abort()
                raise
        return done
    except httpx.HTTPError as exc:
        raise FillError(f"{type(exc).__name__}") from exc


def part_bytes_for(bucket: Bucket, size: int | None) -> int:
    """The configured part size, raised for a file that would need more parts than S3 takes."""
    if size is None:
        return bucket.part_bytes
    return max(bucket.part_bytes, -(-size // MAX_PARTS))


def _check_response(response: httpx.Response, size: int | None) -> None:
    if response.status_code == 429:
        raise Throttled(_retry_after(response.headers.get("retry-after")))
    if response.status_code != 200:
        raise FillError(f"HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in NOT_A_FILE_TYPES:
        raise FillError(f"answered {content_type}, not the file")
    length = response.headers.get("content-length")
    if size is not None and length is not None and length.isdigit() and int(length) != size:
        raise FillError(f"Content-Length {length}, the catalog says {size}")


def _retry_after(value: str | None) -> float:
    """Seconds a 429's Retry-After asks for (an HTTP date, or none: a short default)."""
    if value and value.strip().isdigit():
        return max(1.0, float(value.strip()))
    return DEFAULT_RETRY_AFTER


def _stream_parts(
    response: httpx.Response,
    add_part: Callable[[bytearray], None],
    part_bytes: int,
    sha256: str,
    size: int | None,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> int:
    hasher = hashlib.sha256()
    part = bytearray()
    done = parts = 0
    last_progress = time.monotonic()
    for chunk in response.iter_bytes(READ_CHUNK):
        if stop.is_set():
            raise FillStopped()
        hasher.update(chunk)
        done += len(chunk)
        if size is not None and done > size:
            raise FillError(f"body longer than the catalog's {size} bytes")
        part += chunk
        if len(part) >= part_bytes:
            add_part(part)
            parts += 1
            part = bytearray()
        if time.monotonic() - last_progress >= PROGRESS_EVERY_SECONDS:
            progress(done)
            last_progress = time.monotonic()
    if size is not None and done != size:
        raise FillError(f"body of {done} bytes, the catalog says {size}")
    if hasher.hexdigest() != sha256:
        raise FillError("sha256 mismatch: other bytes than the catalog's")
    if part or not parts:
        add_part(part)  # the last part (or the only one, which may be empty)
    return done
