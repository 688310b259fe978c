"""Segmented fetch: a pool of ranged keep-alive connections filling one .partial.

Like aria2c ``-x``: the missing bytes are cut into pieces (``pieces.py``) that
``connections`` workers take in file order, each over its own keep-alive
connection, writing at their offsets with ``os.pwrite``. Because pieces complete
roughly in file order, ``PrefixHasher`` hashes the contiguous prefix while the
download runs, and only the last pieces in flight are left to hash after the
last byte. Memory stays bounded (one chunk per connection); the sidecar records
the byte ranges on disk, so a killed agent resumes piece by piece.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .download_types import DownloadOptions, DownloadSpec
from .errors import DownloadError, DownloadInterrupted
from .failures import classify
from .files import NOFOLLOW, Sidecar, open_partial
from .http import ConnectionPool, Response, classify_status, parse_content_range
from .pieces import Piece, PieceBoard
from .progress import Progress

log = logging.getLogger("depman.agent")

SAVE_EVERY_SECONDS = 0.2
# A read fills the worker's buffer, so on a slow link a whole chunk could take
# seconds (and stop waits for the next chunk): each read asks for about this
# long of what the connection has been delivering.
READ_SECONDS = 0.25
MIN_READ_BYTES = 64 * 1024


@dataclass
class ProbeResult:
    """What a ``Range: bytes=0-0`` request taught us; ``response`` is set on a 200."""

    url: str
    total: int | None
    etag: str | None
    response: Response | None = None


class Fetcher(Protocol):
    """What the piece fetcher needs of the download it serves (``download._Download``)."""

    spec: DownloadSpec
    options: DownloadOptions
    partial: Path
    sidecar: Sidecar
    progress: Progress

    def open(self, url: str, headers: dict[str, str],
             pool: ConnectionPool | None = None) -> Response: ...

    def on_bytes(self, n: int) -> None: ...

    def probe(self) -> ProbeResult: ...


class RangesUnsupported(DownloadError):
    """The origin stopped honouring ranges, or the file changed under us."""

    code = "ranges_unsupported"


class PrefixHasher:
    """Hashes the file's contiguous downloaded prefix while later pieces still arrive.

    When the last byte lands only the pieces beyond the prefix are left to hash,
    instead of a second full read (the unthrottled benchmark measured that pass at ~25 %).
    """

    def __init__(self, path: str, board: PieceBoard, total: int,
                 abort: threading.Event, chunk_bytes: int) -> None:
        self.fd = os.open(path, os.O_RDONLY | NOFOLLOW)
        self.board = board
        self.total = total
        self.abort = abort
        self.chunk_bytes = chunk_bytes
        self.hasher = hashlib.sha256()
        self.pos = 0
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True, name="piece-hash")
        self.thread.start()

    def _advance(self) -> bool:
        limit = self.board.contiguous()
        if self.pos >= limit:
            return False
        block = os.pread(self.fd, min(self.chunk_bytes, limit - self.pos), self.pos)
        if not block:
            return False
        self.hasher.update(block)  # releases the GIL for large blocks, like pread
        self.pos += len(block)
        self.board.hashed_to(self.pos)
        return True

    def _follow(self) -> None:
        while not self.ended.is_set() and not self.abort.is_set():
            if not self._advance():
                self.ended.wait(0.01)

    def stop(self) -> None:
        """Stop following; idempotent."""
        self.ended.set()
        self.thread.join()

    def finish(self) -> str:
        """Hash the rest (every piece is done) and answer the hex digest."""
        self.stop()
        while self._advance():
            pass
        if self.pos != self.total:
            raise DownloadError(f"Could only hash {self.pos} of {self.total} bytes")
        return self.hasher.hexdigest()

    def close(self) -> None:
        self.stop()
        os.close(self.fd)


class Lane:
    """One worker's keep-alive connection, retry budget and read buffer."""

    def __init__(self, download: Fetcher) -> None:
        opts = download.options
        self.pool = ConnectionPool()
        self.policy = opts.new_policy()
        self.buffer = memoryview(bytearray(opts.chunk_bytes))
        self.read_size = min(MIN_READ_BYTES, opts.chunk_bytes)

    def read(self, response: Response, want: int) -> memoryview:
        size = min(want, self.read_size)
        started = time.monotonic()
        got = response.read_into(self.buffer[:size])
        elapsed = time.monotonic() - started
        rate = got / elapsed if elapsed > 0 else float("inf")
        self.read_size = int(max(MIN_READ_BYTES, min(len(self.buffer), rate * READ_SECONDS)))
        return self.buffer[:got]


class SegmentedFetch:
    """A fixed pool of piece workers; the first hard error stops the others."""

    def __init__(self, download: Fetcher, probe: ProbeResult, etag: str | None,
                 have: list[tuple[int, int]]) -> None:
        assert probe.total is not None
        self.d = download
        self.total = probe.total
        self.url = probe.url
        self.etag = etag
        opts = download.options
        self.board = PieceBoard(self.total, have, opts.connections, opts.min_segment_bytes)
        self.lock = threading.Lock()  # url, generation, error
        self.save_lock = threading.Lock()
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.generation = 0
        self.last_save = 0.0
        self.digest: str | None = None
        self.requests = 0
        self.reused = 0

    def done_bytes(self) -> int:
        return self.board.done_bytes()

    def run(self) -> None:
        d = self.d
        fd = open_partial(d.partial, fresh=not self.board.done_bytes())
        try:
            if os.fstat(fd).st_size != self.total:
                os.ftruncate(fd, self.total)  # sparse; pieces fill it in place
            self.save(force=True)
            d.progress.start(self.done_bytes(), self.total)
            hasher = PrefixHasher(str(d.partial), self.board, self.total,
                                  self.abort, d.options.chunk_bytes)
            try:
                threads = [threading.Thread(target=self.worker, args=(fd,), daemon=True,
                                            name=f"piece-worker-{i}")
                           for i in range(self.board.workers())]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                os.fsync(fd)
                self.save(force=True)
                if self.error is None and self.done_bytes() == self.total:
                    self.digest = hasher.finish()
            finally:
                hasher.close()
        finally:
            os.close(fd)
        log.debug("%s: %d pieces, %d requests (%d on a kept-alive connection), %d steals",
                  d.spec.dest.name, len(self.board.pieces), self.requests, self.reused,
                  self.board.steals)
        if self.error is not None:
            raise self.error
        if d.options.stop.is_set() and self.done_bytes() < self.total:
            raise DownloadInterrupted()

    def save(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_save < SAVE_EVERY_SECONDS:
            return
        # One writer at a time; a worker that finds another writing skips (it is not due).
        if not self.save_lock.acquire(blocking=force):
            return
        try:
            self.last_save = time.monotonic()
            self.d.sidecar.save({"mode": "pieces", "etag": self.etag, "total": self.total,
                                 "have": self.board.have()}, self.d.spec)
        finally:
            self.save_lock.release()

    def stopping(self) -> bool:
        return self.abort.is_set() or self.d.options.stop.is_set()

    def worker(self, fd: int) -> None:
        lane = Lane(self.d)
        try:
            while not self.stopping():
                piece = self.board.take()
                if piece is None:
                    return
                self.fetch_piece(piece, fd, lane)
        except BaseException as exc:
            with self.lock:
                if self.error is None:
                    self.error = exc
            self.abort.set()
        finally:
            with self.lock:
                self.reused += lane.pool.reused
            lane.pool.close()

    def fetch_piece(self, piece: Piece, fd: int, lane: Lane) -> None:
        """Fetch what is left of ``piece``, retrying with this worker's policy."""
        while not self.stopping():
            start, end = self.board.span(piece)
            if start >= end:
                return
            try:
                self.fetch_once(piece, start, end - 1, fd, lane)
            except (OSError, http.client.HTTPException, DownloadError, ValueError) as exc:
                error = classify(exc, f"writing {self.d.spec.dest.name}")
                # With other sources for the file, the download moves on instead.
                if (isinstance(error, RangesUnsupported) or not error.retryable
                        or self.d.options.give_up_early):
                    if error is exc:
                        raise
                    raise error from exc
                delay = lane.policy.next_delay(getattr(exc, "retry_after", None))
                if delay is None:
                    raise DownloadError(f"Piece at byte {piece.pos} failed: {exc}") from exc
                if self.d.options.stop.wait(delay):
                    return

    def fetch_once(self, piece: Piece, start: int, last: int, fd: int, lane: Lane) -> None:
        headers = {"Range": f"bytes={start}-{last}"}
        if self.etag and not self.etag.startswith("W/"):
            headers["If-Range"] = self.etag
        with self.lock:
            url, generation = self.url, self.generation
            self.requests += 1
        with self.d.open(url, headers, lane.pool) as response:
            if response.status == 200:
                raise RangesUnsupported("Origin answered a piece with the whole file "
                                        "(ranges ignored or the file changed)")
            if response.status in (403, 416):
                self.refresh_url(generation)
                raise classify_status(response)
            if response.status != 206:
                raise classify_status(response)
            span = parse_content_range(response.header("Content-Range"))
            if span is None or span[0] != start or span[1] > last:
                raise DownloadError(f"Unexpected Content-Range for piece at byte {start}")
            chunk_bytes = self.d.options.chunk_bytes
            pos = start
            # The board says how much to read next: a steal may cut the piece short,
            # and the rest of this response is then dropped with its connection.
            want = self.board.advance(piece, 0, chunk_bytes, self.stopping)
            while want and not self.stopping():
                chunk = lane.read(response, want)
                if not chunk:
                    raise DownloadError(f"Connection closed early in piece at byte {pos}")
                view = chunk
                while view:
                    written = os.pwrite(fd, view, pos)
                    view = view[written:]
                    pos += written
                want = self.board.advance(piece, len(chunk), chunk_bytes, self.stopping)
                lane.policy.reset()
                self.d.on_bytes(len(chunk))
                self.save()

    def refresh_url(self, generation: int) -> None:
        """A signed CDN URL expired: ask the catalog URL for a fresh redirect (once)."""
        with self.lock:
            if generation != self.generation:
                return
            probe = self.d.probe()
            if probe.response is not None:
                probe.response.close()
                raise RangesUnsupported("Origin no longer honours ranges")
            if probe.total != self.total or (self.etag and probe.etag
                                             and probe.etag != self.etag):
                raise RangesUnsupported("File changed at the origin during the download")
            self.url = probe.url
            self.generation += 1
