"""Every Prometheus metric of the server, and how one scrape is answered.

A process counts its requests, gateway stages, refusals, authentication
failures and pauses in its own counters and histograms (`Metrics`). When the
runner forks several workers (`--workers N`, `--api-port`), each scrape reaches
one of them, so the counters live in prometheus_client's multiprocess files
(`use_multiprocess_dir`) and every scrape sums all the processes' files: a
counter never goes down from one scrape to the next. The fleet gauges
(`FleetGauges`) are read from the database at scrape time, so every process
answers them alike.
"""

from __future__ import annotations

import glob
import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.registry import RestrictedRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from depman.server.cache.collector import CacheCollector
from depman.server.fleet_metrics import FleetGauges
from depman.server.pauses import PauseWatch

if TYPE_CHECKING:
    from depman.server.state import ServerState

# prometheus_client's own variable: where each process keeps its metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond buckets: most agent requests are answered from memory.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
)
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Agent telemetry trimmed instead of refused (server/schemas/telemetry.py). Counted
# where the request model validates, outside any app, so it is process-wide.
TRIMMED = Counter(
    "depman_agent_telemetry_trimmed",
    "Agent telemetry values cut, cleaned or dropped instead of refusing the request.",
    ["field"],
    registry=None,
)


class Metrics:
    """One app's metrics: its registry, counters, histograms and the fleet gauges."""

    def __init__(self, state: ServerState) -> None:
        # Collectors that cannot name their series up front (the cache's, the other
        # processes' files) still answer a scrape restricted by `name[]`.
        self.registry = CollectorRegistry(support_collectors_without_names=True)
        registry = self.registry
        self.latency = Histogram(
            "depman_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        # Which stage of the agent gateway answered (server/agent_gateway/pipeline.py):
        # memos (no database), quick statements, or the full domain call in a session.
        self.memo_answers = Counter(
            "depman_agent_memo_answers",
            "Agent requests answered from this process's memos, without the database.",
            ["endpoint"],
            registry=registry,
        )
        self.quick_answers = Counter(
            "depman_agent_quick_answers",
            "Agent requests answered by one or two statements on a quick connection.",
            ["endpoint"],
            registry=registry,
        )
        self.full_answers = Counter(
            "depman_agent_full_answers",
            "Agent requests answered by the full domain call in a database session.",
            ["endpoint"],
            registry=registry,
        )
        # Changes that dropped the memos of every instance at once (server/cache).
        fleet_drops = Counter(
            "depman_memo_fleet_drops",
            "Changes that dropped the memos of every instance at once, by scope: "
            "everything; instances (empty polls and heartbeats, and every long-poll woken); "
            "heartbeats (a catalog, profile or agent build change).",
            ["scope"],
            registry=registry,
        )
        for scope in ("everything", "instances", "heartbeats"):
            fleet_drops.labels(scope)
        state.cache.on_fleet_drop = lambda scope: fleet_drops.labels(scope).inc()
        # Hostile or broken clients: what the guard refused before parsing (server/guard.py),
        # and failed authentications by realm (server/auth_failures.py).
        self.refused = Counter(
            "depman_requests_refused",
            "Requests refused before parsing: oversized bodies, control characters in URLs.",
            ["reason"],
            registry=registry,
        )
        # Sources depman agents gave up on (status reports' badSources), by reason.
        self.bad_sources = Counter(
            "depman_bad_sources",
            "Sources agents gave up on for a file, by reason (http_429, http_5xx, http_4xx, "
            "connection, stalled, not_the_file, size_mismatch, sha256_mismatch, other).",
            ["reason"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "depman_auth_failures",
            "Failed authentications (agent, admin, login, register), by realm.",
            ["realm"],
            registry=registry,
        )
        self.auth_throttled = Counter(
            "depman_auth_throttled",
            "Requests refused with 429 because their client failed to authenticate too often.",
            ["realm"],
            registry=registry,
        )
        # Event-loop lag, GC pauses and periodic tasks: what makes every request wait.
        self.pauses = PauseWatch(
            loop_lag=Histogram(
                "depman_event_loop_lag_seconds",
                "How late the event loop ran a timer (sampled every 100 ms): time every "
                "request in flight waited.",
                registry=registry,
                buckets=PAUSE_BUCKETS,
            ),
            gc_pause=Histogram(
                "depman_gc_pause_seconds",
                "Garbage collections of this process, by generation.",
                ["generation"],
                registry=registry,
                buckets=PAUSE_BUCKETS,
            ),
            task_duration=Histogram(
                "depman_periodic_task_seconds",
                "Runs of the periodic tasks (maintenance sweep, heartbeat write-behind).",
                ["task"],
                registry=registry,
                buckets=PAUSE_BUCKETS,
            ),
            warn_seconds=state.settings.pause_warning_seconds,
        )
        registry.register(TRIMMED)
        # Not registered: a scrape appends its text (`exposition`), written faster than
        # the registry would.
        self.fleet = FleetGauges(state)
        # This process's long-polls and replica notices (tests wait on the long-polls).
        registry.register(CacheCollector(state.cache))

    def exposition(self, names: frozenset[str] | None = None) -> bytes:
        """The text of one scrape: every process's counters when several serve, else this one's.

        `names`: only the series of these sample names (a scrape's `name[]`), as
        prometheus_client's own handlers answer; None for every series.
        """
        registry = self.registry
        if multiprocess_dir():
            registry = CollectorRegistry(support_collectors_without_names=True)
            multiprocess.MultiProcessCollector(registry)
            # The cache's figures are one process's own: from whichever worker answered, a
            # scrape would see its counters jump back. Served only by a single process.
        served: CollectorRegistry | RestrictedRegistry = registry
        if names is not None:
            served = registry.restricted_registry(names)
        return generate_latest(served) + self.fleet.exposition(names)


def multiprocess_dir() -> str | None:
    """The metric files' directory when the processes share their counters, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


def use_multiprocess_dir(path: str) -> None:
    """Keep every metric created from now on (in this process and its forks) in files
    under `path`, emptied of an earlier run's files first."""
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value class when first imported; pick again now.
    # Every increment asks for the process id, to notice a fork: the id kept here
    # (renewed in each forked child) spares a system call per increment.
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)


_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _process_id() -> int:
    return _pid[0]


def process_exited(pid: int) -> None:
    """A worker exited: drop its live-gauge files (its counters still count)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid, path)


class LatencyMiddleware:
    """Pure ASGI middleware timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # (method, route, status) → its histogram child: `labels()` takes a lock per call.
        self._timers: dict[tuple[str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            key = (scope["method"], getattr(route, "path", None) or "unmatched", str(status[0]))
            timer = self._timers.get(key)
            if timer is None:
                timer = self._timers[key] = self.metrics.latency.labels(*key)
            timer.observe(time.perf_counter() - start)
