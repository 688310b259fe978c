"""Thread-safe download progress: read by the loop for heartbeats, logged when verbose."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("depman.agent")
TOOL = "depman-agent"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Bytes done of one download; ``add`` is cheap and safe from many threads."""

    def __init__(self, dep_id: str, *, log_every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dep_id = dep_id
        self.bytes_done = 0
        self.bytes_total: int | None = None
        # Every byte that arrived, never reset (bytes_done restarts with each attempt).
        self.received = 0
        self._log_every = log_every
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._window_bytes = 0
        self._rate = 0.0
        self._last_log = self._window_start
        # Wall-clock milliseconds, as the field agents send them (startedAtMs, updatedAtMs).
        self.started_at_ms = int(time.time() * 1000)
        self._updated_at_ms = self.started_at_ms
        self.stage = "downloading"

    def start(self, done: int, total: int | None) -> None:
        with self._lock:
            self.bytes_done = done
            self.bytes_total = total

    def add(self, n: int) -> None:
        with self._lock:
            self.received += n
            self.bytes_done += n
            self._window_bytes += n
            self._updated_at_ms = int(time.time() * 1000)
            now = self._clock()
            elapsed = now - self._window_start
            if elapsed >= 1.0:
                self._rate = self._window_bytes / elapsed
                self._window_start, self._window_bytes = now, 0
            due = self._log_every is not None and now - self._last_log >= self._log_every
            if due:
                self._last_log = now
        if due:
            log.info("Progress %s", self.describe())

    def rate(self) -> float:
        with self._lock:
            return self._rate

    def describe(self) -> str:
        with self._lock:
            done, total, rate = self.bytes_done, self.bytes_total, self._rate
        text = f"{self.dep_id}: {format_bytes(done)}"
        if total:
            text += f" of {format_bytes(total)} ({100 * done / total:.0f}%)"
        text += f" at {format_bytes(rate)}/s"
        if total and rate > 0:
            text += f", ETA {int((total - done) / rate)} s"
        return text

    def snapshot(self) -> dict[str, object]:
        """The heartbeat's ``activeDownloads`` entry, in the field agents' names."""
        with self._lock:
            row: dict[str, object] = {
                "depId": self.dep_id, "stage": self.stage, "downloadedBytes": self.bytes_done,
                "throughputBytesPerSec": int(self._rate), "startedAtMs": self.started_at_ms,
                "updatedAtMs": self._updated_at_ms, "tool": TOOL}
            if self.bytes_total is not None:
                row["expectedBytes"] = self.bytes_total
            return row
