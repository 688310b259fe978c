"""The download engine: temp file → verify size and sha256 → atomic rename, with resume.

Entry point: ``download_file(DownloadSpec(...), DownloadOptions(...)) -> DownloadResult``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
from pathlib import Path

from . import protocol as p
from .download_types import DownloadOptions, DownloadResult, DownloadSpec
from .errors import (
    DiskFull,
    DownloadError,
    DownloadInterrupted,
    InsufficientDiskSpace,
    SizeCapExceeded,
    Stalled,
    VerificationError,
)
from .failures import classify
from .files import NOFOLLOW, Sidecar, fsync_dir, open_partial, regular_size
from .http import (
    ConnectionPool,
    Response,
    check_body,
    classify_status,
    open_url,
    parse_content_range,
)
from .pieces import resume_ranges
from .progress import Progress
from .redact import redact_url
from .segments import ProbeResult, RangesUnsupported, SegmentedFetch
from .sidefiles import adopt_legacy, partial_path, sidecar_path

log = logging.getLogger("depman.agent")


# "segmented" is the per-segment layout of agents before piece scheduling.
SEGMENTED_MODES = ("pieces", "segmented")


# The inputs live in download_types.py (segments.py needs them without the engine).
__all__ = ["DownloadOptions", "DownloadResult", "DownloadSpec", "download_file", "hash_file"]

# Files that are text by nature: their origin may rightly call them HTML or JSON.
TEXT_SUFFIXES = frozenset({".json", ".html", ".htm", ".txt", ".md", ".yaml", ".yml"})


class _SegmentedMismatch(VerificationError):
    """sha256 mismatch after a segmented fetch, or of bytes from two sources: worth one
    single-stream retry from zero (it says which source is at fault)."""


class StallWatch:
    """Raises Stalled when the bytes of a window came slower than the floor.

    One clock read per chunk (a chunk is up to 1 MiB): no cost on a fast link. A
    link that stops entirely is caught by the socket timeout instead.
    """

    def __init__(self, floor: int, seconds: float, received: int = 0) -> None:
        self.floor = floor
        self.seconds = seconds
        self.start = time.monotonic()
        self.mark = received

    def check(self, received: int) -> None:
        """``received``: the item's byte count so far (``Progress.received``, which counts
        under its lock: pieces report from several threads)."""
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.seconds:
            return
        got, self.start, self.mark = received - self.mark, now, received  # a new window
        if got < self.floor * elapsed:
            raise Stalled(f"Stalled: {got} bytes in {elapsed:.0f} s, under the floor "
                          f"of {self.floor} bytes/s")


def download_file(spec: DownloadSpec, options: DownloadOptions | None = None) -> DownloadResult:
    """Fetch ``spec.url`` to ``spec.dest``; the final path only ever holds a verified file."""
    return _Download(spec, options or DownloadOptions()).run()


class _Download:
    def __init__(self, spec: DownloadSpec, options: DownloadOptions) -> None:
        self.spec = spec
        self.options = options
        self.partial = partial_path(spec.dest)
        self.sidecar = Sidecar(sidecar_path(spec.dest))
        self.policy = options.new_policy()
        self.progress = options.progress or Progress(spec.label or spec.dest.name)
        self.range_refusals = 0
        self.resumed_from = 0
        # Progress is the item's, shared with earlier sources and attempts: only bytes
        # beyond what it showed when this download began count as new.
        self.high_water = self.progress.bytes_done
        self.check_pages = spec.dest.suffix.lower() not in TEXT_SUFFIXES
        # The .partial holds bytes another source of the file wrote (see _attempt_inner).
        self.inherited = False
        self.stall = (StallWatch(options.stall_bytes_per_second, options.stall_seconds,
                                 self.progress.received)
                      if options.stall_bytes_per_second > 0 and options.stall_seconds > 0
                      else None)

    # -- the retry loop -------------------------------------------------
    def run(self) -> DownloadResult:
        try:
            self.spec.dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise classify(exc, f"creating {self.spec.dest.parent}") from exc
        adopt_legacy(self.spec.dest)
        force_single = False
        while True:
            if self.options.stop.is_set():
                raise DownloadInterrupted()
            try:
                return self._attempt(force_single)
            except (DiskFull, SizeCapExceeded, InsufficientDiskSpace):
                self.discard()  # give the space back; these bytes are of no use
                raise
            except _SegmentedMismatch as exc:
                if force_single:
                    raise
                # Field incident: segmented fetches over signed CDNs produced full-size
                # but corrupt files. One clean single stream from zero before failing;
                # also when the bytes came from two sources (which one was wrong?).
                log.warning("%s; retrying once as a single stream from zero", exc.message)
                force_single = True
            except RangesUnsupported as exc:
                log.warning("%s; restarting as a single stream", exc.message)
                self.discard()
                force_single = True
            except DownloadError as exc:
                if not exc.retryable:
                    raise
                # Only new bytes count as progress: an origin that always closes at the
                # same offset must not be retried forever.
                progressed = self.progress.bytes_done > self.high_water
                if progressed:
                    self.high_water = self.progress.bytes_done
                    self.policy.reset()
                if self.options.give_up_early and (not progressed or isinstance(exc, Stalled)):
                    raise  # another source may do better: the caller moves on
                if self.stall is not None:
                    self.stall = StallWatch(self.stall.floor, self.stall.seconds,
                                            self.progress.received)
                delay = self.policy.next_delay(exc.retry_after)
                if delay is None:
                    raise DownloadError(f"{exc.message} (gave up after "
                                        f"{self.policy.failures} attempts)",
                                        retryable=False) from exc
                log.warning("Download %s: %s; retrying in %.1f s",
                            redact_url(self.spec.url), exc.message, delay)
                if self.options.stop.wait(delay):
                    raise DownloadInterrupted() from exc

    def on_bytes(self, n: int) -> None:
        self.progress.add(n)
        if self.stall is not None:
            self.stall.check(self.progress.received)

    def discard(self) -> None:
        self.inherited = False
        for path in (self.partial, self.sidecar.path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("Could not remove %s: %s", path, exc)

    def open(self, url: str, headers: dict[str, str],
             pool: ConnectionPool | None = None) -> Response:
        return open_url(url, headers=headers, authorization=self.spec.authorization,
                        catalog_url=self.spec.auth_url or self.spec.url,
                        allowed_domains=self.options.allowed_domains,
                        timeout=self.options.timeout, pool=pool)

    def _attempt(self, force_single: bool) -> DownloadResult:
        if self.options.check_dest is not None:  # a retry must not write through a new link
            self.options.check_dest()
        try:
            return self._attempt_inner(force_single)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise classify(exc, f"writing {self.spec.dest.name}") from exc

    def _attempt_inner(self, force_single: bool) -> DownloadResult:
        spec, opts = self.spec, self.options
        meta = self.sidecar.load()
        if force_single or (meta is not None and not self.sidecar.matches(meta, spec)):
            self.discard()
            meta = None
        if meta is not None and self.sidecar.from_elsewhere(meta, spec):
            # Another source of the same file wrote these bytes: keep them (the sha256
            # checks them all at the end), but its ETag means nothing to this source.
            meta = {**meta, "etag": None}
            self.inherited = True
        offset = regular_size(self.partial)
        if offset is None:
            self.discard()  # nothing there, or not a regular file (a planted symlink)
            offset = 0
        if meta is None and offset:
            self.discard()  # a .partial without its sidecar: unknown origin, start over
            offset = 0
        if spec.expected_size is not None and offset > spec.expected_size:
            log.warning("Partial of %s is larger than expected; discarding", spec.dest.name)
            self.discard()
            meta, offset = None, 0
        if meta is not None and meta.get("mode") in SEGMENTED_MODES:
            return self._segmented(meta)
        wants_segments = (not force_single and opts.connections > 1 and offset == 0 and
                          (spec.expected_size is None
                           or spec.expected_size >= 2 * opts.min_segment_bytes))
        if not wants_segments:
            return self._single(offset, meta)
        probe = self.probe()
        if probe.response is not None:  # the origin ignores Range: stream what it sends
            return self._single(0, None, probe.response)
        if probe.total is None or probe.total < 2 * opts.min_segment_bytes:
            return self._single(0, None)
        return self._segmented(None, probe)

    def probe(self) -> ProbeResult:
        """Ask the catalog URL for byte 0: learns ranges, total, ETag and the CDN URL."""
        response = self.open(self.spec.url, {"Range": "bytes=0-0"})
        if response.status in (200, 206) and self.check_pages:
            try:
                check_body(response)
            except DownloadError:
                response.close()
                raise
        if response.status == 200:
            return ProbeResult(url=response.url, total=None, etag=response.header("ETag"),
                               response=response)
        try:
            if response.status != 206:
                raise classify_status(response)
            span = parse_content_range(response.header("Content-Range"))
            if span is None or span[2] is None:
                raise DownloadError("Bad Content-Range on probe", retryable=True)
            self.check_total(span[2])
            return ProbeResult(url=response.url, total=span[2], etag=response.header("ETag"))
        finally:
            if response.status != 200:
                response.close()

    def check_total(self, total: int | None) -> None:
        expected = self.spec.expected_size
        if total is not None and expected is not None and total != expected:
            raise VerificationError(f"Size mismatch: origin has {total} bytes, catalog "
                                    f"expects {expected}", retryable=False,
                                    reason="size_mismatch")

    # -- single stream --------------------------------------------------
    def _single(self, offset: int, meta: dict[str, object] | None,
                response: Response | None = None) -> DownloadResult:
        spec = self.spec
        validator = meta.get("etag") if meta else None
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if isinstance(validator, str) and not validator.startswith("W/"):
                headers["If-Range"] = validator
        if response is None:
            response = self.open(spec.url, headers)
        with response:
            if response.status == 416 and offset and offset == spec.expected_size:
                return self._finish_single_prefix(offset)
            if response.status == 416 and offset:
                self.range_refusals += 1
                if self.range_refusals >= 2:  # refused twice: our partial is the problem
                    self.discard()
            if response.status not in (200, 206):
                raise classify_status(response)
            if self.check_pages:
                check_body(response)
            etag = response.header("ETag")
            if response.status == 206:
                span = parse_content_range(response.header("Content-Range"))
                changed = isinstance(validator, str) and etag is not None and etag != validator
                if span is None or span[0] != offset or changed:
                    self.discard()
                    raise DownloadError("Origin answered the range request inconsistently; "
                                        "restarting from zero")
                total = span[2]
            else:
                if offset:
                    log.info("Origin answered 200 to a range request; restarting %s from zero",
                             spec.dest.name)
                offset = 0
                length = response.header("Content-Length")
                total = int(length) if length and length.isdigit() else None
            self.check_total(total)
            size_hint = total if total is not None else spec.expected_size
            if self.options.ensure_space and size_hint is not None:
                self.options.ensure_space(size_hint - offset)
            self.sidecar.save({"mode": "single", "etag": etag, "total": total}, spec)
            return self._stream(response, offset, total)

    def _stream(self, response: Response, offset: int, total: int | None) -> DownloadResult:
        hasher = hashlib.sha256()
        self.resumed_from = offset
        with os.fdopen(open_partial(self.partial, fresh=not offset), "r+b") as out:
            if offset:  # re-hash the prefix we kept, so no second pass at the end
                remaining = offset
                while remaining:
                    block = out.read(min(self.options.chunk_bytes, remaining))
                    if not block:
                        raise DownloadError("Partial file shrank while resuming")
                    hasher.update(block)
                    remaining -= len(block)
                out.truncate(offset)
            self.progress.start(offset, total)
            written = offset
            # Without a size from the origin, the catalog's is the cap: one byte past
            # it fails the download (an endless body must not fill the disk).
            cap = self.spec.expected_size if total is None else None
            while True:
                if self.options.stop.is_set():
                    out.flush()
                    os.fsync(out.fileno())
                    raise DownloadInterrupted()
                want = self.options.chunk_bytes
                if total is not None:
                    want = min(want, total - written)
                    if want <= 0:
                        break
                elif cap is not None:
                    want = min(want, cap + 1 - written)
                try:
                    chunk = response.read_some(want)
                except TimeoutError as exc:  # bytes had come, then none for a whole timeout
                    if written == offset:
                        raise
                    out.flush()
                    raise Stalled(f"Stalled: no byte for {self.options.timeout:.0f} s at byte "
                                  f"{written}") from exc
                if not chunk:
                    break
                if cap is not None and written + len(chunk) > cap:
                    raise SizeCapExceeded(f"{self.spec.dest.name}: the origin sent more than "
                                          f"the expected {cap} bytes")
                if total is None and cap is None and self.options.check_room is not None:
                    self.options.check_room(len(chunk))
                out.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                self.on_bytes(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and written != total:
            raise DownloadError(f"Connection closed early: got {written} of {total} bytes")
        return self.finalize(written, hasher.hexdigest(), segmented=False)

    def _finish_single_prefix(self, size: int) -> DownloadResult:
        return self.finalize(size, hash_file(self.partial, self.options.chunk_bytes), False)

    # -- segmented ------------------------------------------------------
    def _segmented(self, meta: dict[str, object] | None,
                   probe: ProbeResult | None = None) -> DownloadResult:
        if probe is None:
            probe = self.probe()
            if probe.response is not None:
                self.discard()
                return self._single(0, None, probe.response)
            assert meta is not None
            if probe.total != meta.get("total") or (
                    meta.get("etag") and probe.etag and probe.etag != meta.get("etag")):
                log.info("%s changed at the origin; restarting from zero", self.spec.dest.name)
                self.discard()
                meta = None
        assert probe.total is not None
        have = resume_ranges(meta, probe.total) if meta is not None else []
        if have and regular_size(self.partial) != probe.total:
            have = None  # the .partial is gone or was cut: its ranges are not on disk
        if have is None:
            log.warning("Cannot trust the resume data of %s; restarting from zero",
                        self.spec.dest.name)
            self.discard()
            meta, have = None, []
        etag = probe.etag
        if meta is not None and isinstance(meta.get("etag"), str):
            etag = str(meta["etag"])
        if self.options.ensure_space:
            self.options.ensure_space(probe.total - sum(e - s for s, e in have))
        fetch = SegmentedFetch(self, probe, etag, have)
        self.resumed_from = fetch.done_bytes()
        fetch.run()
        digest = fetch.digest or hash_file(self.partial, self.options.chunk_bytes)
        return self.finalize(probe.total, digest, segmented=True)

    # -- verify and commit ----------------------------------------------
    def finalize(self, size: int, digest: str, segmented: bool) -> DownloadResult:
        spec = self.spec
        if spec.expected_size is not None and size != spec.expected_size:
            self.discard()
            raise VerificationError(f"Size mismatch: got {size} bytes, expected "
                                    f"{spec.expected_size}", retryable=False,
                                    reason="size_mismatch")
        if spec.sha256 and digest != spec.sha256.lower():
            error = _SegmentedMismatch if segmented or self.inherited else VerificationError
            self.discard()
            raise error(f"sha256 mismatch for {spec.dest.name}: expected {spec.sha256.lower()}, "
                        f"got {digest}", retryable=False, reason="sha256_mismatch")
        if self.options.check_dest is not None:
            self.options.check_dest()
        os.replace(self.partial, spec.dest)
        fsync_dir(spec.dest.parent)
        self.sidecar.path.unlink(missing_ok=True)
        return DownloadResult(spec.dest, size, digest, segmented, self.resumed_from)


def hash_file(path: Path, chunk_bytes: int = p.CHUNK_BYTES) -> str:
    """sha256 of the regular file at ``path`` (a symlink there is not followed: ELOOP)."""
    hasher = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), "rb") as f:
        while block := f.read(chunk_bytes):
            hasher.update(block)
    return hasher.hexdigest()
