"""The fleet's gauges, read from the database at scrape time.

Every server process answers them from the same rows, so a scrape gets the same
figures whichever worker it reaches. Per-instance gauges carry the label
`instance_id` (Prometheus keeps `instance` for the scraped target). A scrape that
names the series it wants (`name[]`) and none of these reads no row at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


class FleetGauges:
    """Fleet-wide counts and per-instance gauges from the database.

    `exposition()` is what a scrape sends. The per-instance gauges are written as
    text directly: at 10,000 instances they are ~90,000 samples, and building and
    formatting each through prometheus_client's sample objects costs ~9x the CPU
    (~0.5 s against ~50 ms), while the answering process's requests wait for the GIL.
    """

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def exposition(self, names: frozenset[str] | None = None) -> bytes:
        """Both kinds of gauges in the text exposition format.

        `names`: only the series of these sample names, as prometheus_client's own
        handlers restrict a scrape; None for all.
        """
        if names is not None and not names & FLEET_SAMPLE_NAMES:
            return b""
        figures = self._read()
        families: Iterable[Metric] = figures.families()
        if names is not None:
            families = _restricted(families, names)
        return generate_latest(_Families(families)) + figures.instance_text(names)

    def _read(self) -> FleetFigures:
        now = utcnow()
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
            return FleetFigures(
                rows=rows,
                depths=depths,
                items=queue.count_by_state(session=session),
                job_counts=jobs.count_by_state(session=session),
                source_bytes=fleet_source_bytes(session=session),
                cutoff=now - timedelta(seconds=self._state.policy.live_ttl_seconds),
            )


@dataclass(frozen=True)
class FleetFigures:
    """One read of the fleet's rows, for one scrape."""

    rows: Sequence[Any]
    depths: Mapping[str, int]
    items: Mapping[str, int]
    job_counts: Mapping[str, int]
    source_bytes: Mapping[str, int]
    cutoff: datetime

    def _fresh(self, row: Any) -> bool:
        return row.last_heartbeat_at is not None and row.last_heartbeat_at >= self.cutoff

    def families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The fleet-wide figures (the per-instance gauges are apart)."""
        live = sum(1 for row in self.rows if self._fresh(row))
        yield GaugeMetricFamily(
            "depman_instances_live", "Instances with a fresh heartbeat.", value=live
        )
        yield GaugeMetricFamily("depman_instances", "Instances known.", value=len(self.rows))
        family = GaugeMetricFamily("depman_queue_items", "Queue items by state.", labels=["state"])
        for s in ItemState:
            family.add_metric([s.value], self.items.get(s.value, 0))
        yield family
        family = GaugeMetricFamily("depman_jobs", "Jobs by state.", labels=["state"])
        for j in JobState:
            family.add_metric([j.value], self.job_counts.get(j.value, 0))
        yield family
        # Summed from the instance rows, so it only grows and every process agrees.
        counter = CounterMetricFamily(
            "depman_source_bytes",
            "Bytes the fleet's downloads received, by source kind (mirror, upstream).",
            labels=["kind"],
        )
        for kind, value in self.source_bytes.items():
            counter.add_metric([kind], value)
        yield counter

    def _instance_values(self) -> dict[str, list[tuple[str, float | int]]]:
        values: dict[str, list[tuple[str, float | int]]] = {key: [] for key in INSTANCE_GAUGES}
        for row in self.rows:
            iid = row.instance_id
            if row.disk_free_bytes is not None:
                values["disk_free"].append((iid, row.disk_free_bytes))
            if row.disk_total_bytes is not None:
                values["disk_total"].append((iid, row.disk_total_bytes))
            if row.dynamic_bytes_used is not None:
                values["dynamic"].append((iid, row.dynamic_bytes_used))
            values["queue"].append((iid, self.depths.get(iid, 0)))
            values["rate"].append((iid, download_rate(row.active_downloads)))
            values["failed"].append((iid, len(row.failed_dep_ids or [])))
            values["live"].append((iid, 1 if self._fresh(row) and row.lost_at is None else 0))
            values["lost"].append((iid, 0 if row.lost_at is None else 1))
            if row.last_heartbeat_at is not None:
                values["heartbeat"].append((iid, row.last_heartbeat_at.timestamp()))
        return values

    def instance_text(self, names: frozenset[str] | None = None) -> bytes:
        """The per-instance gauges, as `generate_latest` would write them, written directly.

        `names`: only the gauges of these names; None for all.
        """
        out: list[str] = []
        for key, samples in self._instance_values().items():
            name, text = INSTANCE_GAUGES[key]
            if names is not None and name not in names:
                continue
            out.append(f"# HELP {name} {text}\n# TYPE {name} gauge\n")
            out.extend(
                f'{name}{{instance_id="{_label_value(iid)}"}} {value}\n'
                for iid, value in samples
            )
        return "".join(out).encode()


# The sample names of the fleet-wide families (`FleetFigures.families`).
FLEET_FAMILY_SAMPLE_NAMES = frozenset(
    {
        "depman_instances_live",
        "depman_instances",
        "depman_queue_items",
        "depman_jobs",
        "depman_source_bytes_total",
    }
)
FLEET_SAMPLE_NAMES = FLEET_FAMILY_SAMPLE_NAMES | {name for name, _ in INSTANCE_GAUGES.values()}


def _restricted(families: Iterable[Metric], names: frozenset[str]) -> Iterator[Metric]:
    """The families with only the samples of `names`; a family left empty is dropped."""
    for family in families:
        samples = [sample for sample in family.samples if sample.name in names]
        if samples:
            kept = Metric(family.name, family.documentation, family.type)
            kept.samples = samples
            yield kept


class _Families:
    """A collector of already-built metric families, for `generate_latest`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _label_value(value: str) -> str:
    # The exposition format's escapes; instance ids rarely need any.
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value
