"""The fleet's gauges, read from the database at scrape time.

Every server process answers them from the same rows, so a scrape gets the same
figures whichever worker it reaches. Per-instance gauges carry the label
`instance_id` (Prometheus keeps `instance` for the scraped target).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from depman.core import jobs, queue
from depman.core.clock import utcnow
from depman.core.source_bytes import fleet_source_bytes
from depman.core.states import OPEN_ITEM_STATES, ItemState, JobState
from depman.store.models import Instance, QueueItem

if TYPE_CHECKING:
    from depman.server.state import ServerState

# (name, help) of each per-instance gauge, in the order they are exposed.
INSTANCE_GAUGES = {
    "disk_free": (
        "depman_instance_disk_free_bytes",
        "Free bytes on the instance's models disk, as its agent last reported.",
    ),
    "disk_total": (
        "depman_instance_disk_total_bytes",
        "Size of the instance's models disk (or its quota), as its agent last reported.",
    ),
    "dynamic": (
        "depman_instance_dynamic_cache_bytes",
        "Bytes the instance's dynamic (evictable) models take, as its agent last reported.",
    ),
    "queue": (
        "depman_instance_queue_depth",
        "Queue items of the instance waiting or in progress.",
    ),
    "rate": (
        "depman_instance_download_rate_bytes_per_second",
        "Sum of the instance's current download rates, as its agent last reported.",
    ),
    "failed": (
        "depman_instance_failed_deps",
        "Models the instance's agent reports as failing to download.",
    ),
    "live": (
        "depman_instance_live",
        "1 while the instance's heartbeat is fresh, else 0.",
    ),
    "lost": (
        "depman_instance_lost",
        "1 once the instance is declared lost (its jobs moved away), else 0.",
    ),
    "heartbeat": (
        "depman_instance_last_heartbeat_timestamp_seconds",
        "Unix time of the instance's last heartbeat.",
    ),
}


def download_rate(active_downloads: Any) -> float:
    """Bytes per second of all the downloads a heartbeat listed (malformed entries skipped)."""
    total = 0.0
    for entry in active_downloads or []:
        if not isinstance(entry, Mapping):
            continue
        # Rows stored before the field agents' name was adopted use depman's old one.
        rate = entry.get("throughputBytesPerSec", entry.get("bytesPerSecond"))
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            total += float(rate)
    return total


class FleetCollector(Collector):
    """Fleet-wide counts and per-instance gauges from the database."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = utcnow()
        cutoff = now - timedelta(seconds=self._state.policy.live_ttl_seconds)
        with self._state.db.read_session() as session:
            rows = session.execute(
                select(
                    Instance.instance_id,
                    Instance.disk_free_bytes,
                    Instance.disk_total_bytes,
                    Instance.dynamic_bytes_used,
                    Instance.active_downloads,
                    Instance.failed_dep_ids,
                    Instance.last_heartbeat_at,
                    Instance.lost_at,
                ).order_by(Instance.instance_id)
            ).all()
            depths: dict[str, int] = {
                instance_id: count
                for instance_id, count in session.execute(
                    select(QueueItem.instance_id, func.count())
                    .where(QueueItem.state.in_(OPEN_ITEM_STATES))
                    .group_by(QueueItem.instance_id)
                )
            }
            items = queue.count_by_state(session=session)
            job_counts = jobs.count_by_state(session=session)
            source_bytes = fleet_source_bytes(session=session)

        live = sum(1 for row in rows if row.last_heartbeat_at and row.last_heartbeat_at >= cutoff)
        yield GaugeMetricFamily(
            "depman_instances_live", "Instances with a fresh heartbeat.", value=live
        )
        yield GaugeMetricFamily("depman_instances", "Instances known.", value=len(rows))
        family = GaugeMetricFamily("depman_queue_items", "Queue items by state.", labels=["state"])
        for s in ItemState:
            family.add_metric([s.value], items.get(s.value, 0))
        yield family
        family = GaugeMetricFamily("depman_jobs", "Jobs by state.", labels=["state"])
        for j in JobState:
            family.add_metric([j.value], job_counts.get(j.value, 0))
        yield family
        # Summed from the instance rows, so it only grows and every process agrees.
        counter = CounterMetricFamily(
            "depman_source_bytes",
            "Bytes the fleet's downloads received, by source kind (mirror, upstream).",
            labels=["kind"],
        )
        for kind, value in source_bytes.items():
            counter.add_metric([kind], value)
        yield counter

        gauges = {
            key: GaugeMetricFamily(name, text, labels=["instance_id"])
            for key, (name, text) in INSTANCE_GAUGES.items()
        }
        for row in rows:
            labels = [row.instance_id]
            if row.disk_free_bytes is not None:
                gauges["disk_free"].add_metric(labels, row.disk_free_bytes)
            if row.disk_total_bytes is not None:
                gauges["disk_total"].add_metric(labels, row.disk_total_bytes)
            if row.dynamic_bytes_used is not None:
                gauges["dynamic"].add_metric(labels, row.dynamic_bytes_used)
            gauges["queue"].add_metric(labels, depths.get(row.instance_id, 0))
            gauges["rate"].add_metric(labels, download_rate(row.active_downloads))
            gauges["failed"].add_metric(labels, len(row.failed_dep_ids or []))
            fresh = row.last_heartbeat_at is not None and row.last_heartbeat_at >= cutoff
            gauges["live"].add_metric(labels, 1 if fresh and row.lost_at is None else 0)
            gauges["lost"].add_metric(labels, 0 if row.lost_at is None else 1)
            if row.last_heartbeat_at is not None:
                gauges["heartbeat"].add_metric(labels, row.last_heartbeat_at.timestamp())
        yield from gauges.values()
