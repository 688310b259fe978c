"""`GET /metrics` in Prometheus text format (the metrics: server/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics: request latency and counters, fleet and per-instance gauges."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
