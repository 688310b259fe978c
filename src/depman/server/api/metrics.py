"""`GET /metrics` in Prometheus text format, and the request latency middleware."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Receive, Scope, Send

from depman.core import jobs, queue
from depman.core.clock import utcnow
from depman.core.states import ItemState, JobState
from depman.server.cache.collector import CacheCollector
from depman.server.pauses import PauseWatch
from depman.server.schemas.telemetry import TRIMMED
from depman.server.state import ServerState
from depman.store.models import Instance

router = APIRouter(tags=["metrics"])


class StoreCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cutoff = utcnow() - timedelta(seconds=self._state.policy.live_ttl_seconds)
        with self._state.db.read_session() as session:
            live = session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(Instance.last_heartbeat_at >= cutoff)
            )
            total = session.scalar(select(func.count()).select_from(Instance))
            items = queue.count_by_state(session=session)
            job_counts = jobs.count_by_state(session=session)
        yield GaugeMetricFamily(
            "depman_instances_live", "Instances with a fresh heartbeat.", value=live or 0
        )
        yield GaugeMetricFamily("depman_instances", "Instances known.", value=total or 0)
        family = GaugeMetricFamily("depman_queue_items", "Queue items by state.", labels=["state"])
        for s in ItemState:
            family.add_metric([s.value], items.get(s.value, 0))
        yield family
        family = GaugeMetricFamily("depman_jobs", "Jobs by state.", labels=["state"])
        for j in JobState:
            family.add_metric([j.value], job_counts.get(j.value, 0))
        yield family


class Metrics:
    """The process's registry and request histogram."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "depman_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            registry=self.registry,
            # Sub-millisecond buckets: most agent requests are answered from memory.
            buckets=(
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
            ),
        )
        # Which stage of the agent gateway answered (server/agent_gateway/pipeline.py):
        # memos (no database), quick statements, or the full domain call in a session.
        self.memo_answers = Counter(
            "depman_agent_memo_answers",
            "Agent requests answered from this process's memos, without the database.",
            ["endpoint"],
            registry=self.registry,
        )
        self.quick_answers = Counter(
            "depman_agent_quick_answers",
            "Agent requests answered by one or two statements on a quick connection.",
            ["endpoint"],
            registry=self.registry,
        )
        self.full_answers = Counter(
            "depman_agent_full_answers",
            "Agent requests answered by the full domain call in a database session.",
            ["endpoint"],
            registry=self.registry,
        )
        # Hostile or broken clients: what the guard refused before parsing (server/guard.py),
        # and failed authentications by realm (server/auth_failures.py).
        self.refused = Counter(
            "depman_requests_refused",
            "Requests refused before parsing: oversized bodies, control characters in URLs.",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "depman_auth_failures",
            "Failed authentications (agent, admin, login, register), by realm.",
            ["realm"],
            registry=self.registry,
        )
        self.auth_throttled = Counter(
            "depman_auth_throttled",
            "Requests refused with 429 because their client failed to authenticate too often.",
            ["realm"],
            registry=self.registry,
        )
        # Event-loop lag, GC pauses and periodic tasks: what makes every request wait.
        self.pauses = PauseWatch(
            self.registry, warn_seconds=state.settings.pause_warning_seconds
        )
        # Agent telemetry trimmed instead of refused (server/schemas/telemetry.py).
        self.registry.register(TRIMMED)
        self.registry.register(StoreCollector(state))
        self.registry.register(CacheCollector(state.cache))


class LatencyMiddleware:
    """Pure ASGI middleware timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], path, str(status[0])).observe(
                time.perf_counter() - start
            )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics: live instances, queue items and jobs by state, request latency."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
