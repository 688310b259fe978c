"""What makes one server process wait: event-loop lag, garbage-collector pauses, periodic tasks.

Every agent request of a process is answered on its one event loop, so anything
that holds the loop or the GIL for a few hundred milliseconds (a full garbage
collection over a large heap, a periodic task doing Python work) delays every
request in flight at once: a stall, not saturation. Each is measured into
`/metrics` histograms, and one that lasts longer than `warn_seconds` is logged as
a warning (at most one line per kind a minute), so an operator can tell which.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

from depman.server.warn_limit import WarnLimiter

log = logging.getLogger(__name__)
LAG_SAMPLE_SECONDS = 0.1


class PauseWatch:
    """Observes one process's pauses into its histograms (declared in server/metrics.py),
    and warns, rate-limited, of long ones."""

    def __init__(
        self,
        *,
        loop_lag: Histogram,
        gc_pause: Histogram,
        task_duration: Histogram,
        warn_seconds: float = 0.25,
    ) -> None:
        self.warn_seconds = warn_seconds
        self.loop_lag = loop_lag
        self.gc_pause = gc_pause
        self.task_duration = task_duration
        self._gc_started = 0.0
        self._warnings = WarnLimiter(log)

    # -- garbage collector

    def install_gc_callback(self) -> None:
        """Time every collection of this process (idempotent)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def remove_gc_callback(self) -> None:
        """Stop timing collections (the app is shutting down)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._gc_started
        generation = info.get("generation", 0)
        self.gc_pause.labels(str(generation)).observe(seconds)
        if seconds >= self.warn_seconds:
            self._warnings.warn(
                "gc",
                "garbage collection (generation %d) paused the process for %.0f ms "
                "(%d objects freed)",
                generation,
                seconds * 1000,
                info.get("collected", 0),
            )

    # -- the event loop

    async def watch_loop(self) -> None:
        """Sample the event loop's lag until cancelled."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LAG_SAMPLE_SECONDS)
            lag = max(0.0, time.perf_counter() - started - LAG_SAMPLE_SECONDS)
            self.loop_lag.observe(lag)
            if lag >= self.warn_seconds:
                self._warnings.warn("loop", "the event loop was held for %.0f ms", lag * 1000)

    # -- periodic tasks

    @contextmanager
    def timed(self, task: str) -> Iterator[None]:
        """Time one run of a periodic task."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe_task(task, time.perf_counter() - started)

    def observe_task(
        self, task: str, seconds: float, steps: dict[str, float] | None = None
    ) -> None:
        """One run of a periodic task took `seconds` (`steps`: where, by step)."""
        self.task_duration.labels(task).observe(seconds)
        if seconds >= self.warn_seconds:
            where = ""
            if steps:
                where = " (" + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()) + ")"
            self._warnings.warn(
                task, "periodic task %s took %.0f ms%s", task, seconds * 1000, where
            )
