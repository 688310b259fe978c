"""`GET /metrics` in Prometheus text format (the metrics: server/metrics.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(
    request: Request,
    names: Annotated[
        list[str] | None,
        Query(
            alias="name[]",
            description="Only the series of these sample names (repeatable), as "
            "prometheus_client's handlers answer: e.g. a slower scrape job for the "
            "per-instance gauges. Without it, every series.",
        ),
    ] = None,
) -> Response:
    """Prometheus metrics: request latency and counters, fleet and per-instance gauges."""
    wanted = None if names is None else frozenset(names)
    return Response(request.app.state.metrics.exposition(wanted), media_type=CONTENT_TYPE_LATEST)
