"""The dashboard's read models: plain frozen dataclasses a template or a test reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from depman.core.states import ACTIVE_JOB_STATES, JobState

# A job in one of these pins its deps on its instance (design.md, "Jobs").
PINNING_JOB_STATES = ACTIVE_JOB_STATES
JOB_STATES = tuple(state.value for state in JobState)
DEFAULT_JOBS_LIMIT = 200


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """`end - start` in seconds, or None when either is missing."""
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


@dataclass(frozen=True)
class Download:
    """One download in progress, as the instance's last heartbeat reported it."""

    dep_id: str
    bytes_done: int
    bytes_total: int | None
    bytes_per_second: float | None
    stage: str | None = None
    tool: str | None = None

    @property
    def fraction(self) -> float | None:
        """Share done in 0..1, or None when the total is unknown."""
        if not self.bytes_total:
            return None
        return max(0.0, min(1.0, self.bytes_done / self.bytes_total))

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate, or None."""
        if not self.bytes_total or not self.bytes_per_second:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.bytes_per_second)


@dataclass(frozen=True)
class InstanceRow:
    """One line of the fleet table."""

    instance_id: str
    server_type: str
    ip: str | None
    agent_version: str | None
    status: str  # "live", "stale", "lost" (swept: must register again) or "never"
    last_heartbeat_at: datetime | None
    heartbeat_age: float | None
    disk_total: int | None
    disk_used: int | None
    disk_free: int | None
    dynamic_used: int | None
    dynamic_cap: int | None
    static_count: int
    dynamic_count: int
    items_queued: int
    items_running: int
    items_failed: int
    agent_queue_depth: int | None
    downloads: list[Download]
    active_jobs: int
    failed_dep_ids: list[str]
    drained: bool = False  # an operator stopped new jobs here
    downloads_failing: bool = False  # its recent downloads all failed: placed last

    @property
    def live(self) -> bool:
        """Heartbeat within the TTL."""
        return self.status == "live"

    @property
    def disk_fraction(self) -> float | None:
        """Used share of the disk, or None without disk stats."""
        if not self.disk_total or self.disk_used is None:
            return None
        return max(0.0, min(1.0, self.disk_used / self.disk_total))

    @property
    def dynamic_fraction(self) -> float | None:
        """Dynamic cache use against its cap, or None without a cap."""
        if not self.dynamic_cap or self.dynamic_used is None:
            return None
        return max(0.0, min(1.0, self.dynamic_used / self.dynamic_cap))


@dataclass(frozen=True)
class FleetOverview:
    """The fleet page: every instance plus totals."""

    instances: list[InstanceRow]
    generated_at: datetime
    live_ttl: float
    jobs_by_state: dict[str, int]
    # Bytes the fleet's downloads received from the mirror and from the upstreams.
    source_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def mirror_share(self) -> float | None:
        """The share of downloaded bytes the mirror served (None: nothing downloaded yet)."""
        total = sum(self.source_bytes.values())
        return self.source_bytes.get("mirror", 0) / total if total else None

    @property
    def live_count(self) -> int:
        """Instances with a fresh heartbeat."""
        return sum(1 for row in self.instances if row.live)

    @property
    def stale_count(self) -> int:
        """Instances that heartbeat once but not lately, or never."""
        return len(self.instances) - self.live_count

    @property
    def download_count(self) -> int:
        """Downloads in progress across the fleet."""
        return sum(len(row.downloads) for row in self.instances)

    @property
    def queued_count(self) -> int:
        """Queue items waiting across the fleet."""
        return sum(row.items_queued for row in self.instances)

    @property
    def failed_count(self) -> int:
        """Failed queue items across the fleet."""
        return sum(row.items_failed for row in self.instances)

    @property
    def bytes_per_second(self) -> float:
        """Aggregate download rate."""
        return sum(d.bytes_per_second or 0.0 for row in self.instances for d in row.downloads)


@dataclass(frozen=True)
class InventoryEntry:
    """A dep an instance holds."""

    dep_id: str
    kind: str
    since: datetime | None
    size_bytes: int | None
    dest_relative_path: str | None
    pinned: bool


@dataclass(frozen=True)
class PinnedDep:
    """A dep that jobs on the instance wait for or use."""

    dep_id: str
    job_ids: list[str]
    installed: bool


@dataclass(frozen=True)
class QueueEntry:
    """One queue item of an instance."""

    item_id: str
    dep_id: str
    op: str
    state: str
    priority: int
    attempts: int
    error: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    download: Download | None
    next_attempt_at: datetime | None = None
    cancel_reason: str | None = None
    waiting_for_upstream: str | None = None  # a capped upstream host it waits for


@dataclass(frozen=True)
class WaitingDep:
    """A dep a job still waits for, with its queue item's state on the instance."""

    dep_id: str
    item_state: str | None
    fraction: float | None


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs table."""

    job_id: str
    state: str
    server_type: str
    instance_id: str | None
    dep_ids: list[str]
    waiting_on: list[WaitingDep]
    error: str | None
    placements: int
    created_at: datetime | None
    placed_at: datetime | None
    ready_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    now: datetime

    @property
    def age(self) -> float | None:
        """Seconds since submission."""
        return seconds_between(self.created_at, self.now)

    @property
    def deps_wait(self) -> float | None:
        """Placement to ready (or to now while still waiting)."""
        if self.placed_at is None:
            return None
        end = self.ready_at or (self.now if self.state == "waiting_deps" else self.finished_at)
        return seconds_between(self.placed_at, end)

    @property
    def run_time(self) -> float | None:
        """Start to finish (or to now while running)."""
        if self.started_at is None:
            return None
        return seconds_between(self.started_at, self.finished_at or self.now)


@dataclass(frozen=True)
class JobsOverview:
    """The jobs page."""

    jobs: list[JobRow]
    counts: dict[str, int]
    state_filter: str | None
    limit: int

    @property
    def total(self) -> int:
        """All jobs, whatever the filter."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class ReceiptEntry:
    """The last verification receipt the agent sent for a dep."""

    dep_id: str
    algorithm: str
    sha256: str | None
    size_bytes: int | None
    verified_at: datetime | None
    dest_relative_path: str | None
    agent_version: str | None
    matches_catalog: bool
    received_at: datetime | None


@dataclass(frozen=True)
class InstanceDetail:
    """The instance page."""

    row: InstanceRow
    profile_id: str | None
    dynamic_policy: dict[str, Any]
    registered_at: datetime | None
    created_at: datetime | None
    static: list[InventoryEntry]
    dynamic: list[InventoryEntry]
    pinned: list[PinnedDep]
    queue: list[QueueEntry]
    jobs: list[JobRow]
    generated_at: datetime
    receipts: list[ReceiptEntry] = field(default_factory=list)
    lost_at: datetime | None = None
    drained: bool = False
    # Telemetry later field agents send: kept and shown, never dropped.
    provider: str | None = None
    provider_metadata: dict[str, Any] = field(default_factory=dict)
    disk_stats_path: str | None = None
    disk_diagnostics: dict[str, Any] = field(default_factory=dict)
    # Recent operator actions on this instance (core/audit.py rows as dicts).
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogRow:
    """One dep of the catalog with where it is."""

    dep_id: str
    kind: str
    auth: str
    url_host: str
    dest_relative_path: str
    sha256: str | None
    size_bytes: int | None
    holders_live: int
    holders_total: int
    items_queued: int
    items_running: int
    items_failed: int
    profiles: list[str] = field(default_factory=list)
    # Further sources (as written, or their hosts), tried after the url.
    sources: list[str] = field(default_factory=list)


def int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _first(entry: Mapping[str, Any], name: str, old_name: str) -> Any:
    value = entry.get(name)
    return value if value is not None else entry.get(old_name)


def parse_downloads(raw: Iterable[Mapping[str, Any]] | None) -> list[Download]:
    """Heartbeat `activeDownloads` entries; malformed ones are skipped, not fatal."""
    out: list[Download] = []
    for entry in raw or []:
        if not isinstance(entry, Mapping) or not entry.get("depId"):
            continue
        # The field agents' names; rows stored before they were adopted use depman's old ones.
        rate = _first(entry, "throughputBytesPerSec", "bytesPerSecond")
        stage, tool = entry.get("stage"), entry.get("tool")
        out.append(
            Download(
                dep_id=str(entry["depId"]),
                bytes_done=int_or_none(_first(entry, "downloadedBytes", "bytesDone")) or 0,
                bytes_total=int_or_none(_first(entry, "expectedBytes", "bytesTotal")),
                bytes_per_second=float(rate) if isinstance(rate, int | float) else None,
                stage=str(stage) if stage else None,
                tool=str(tool) if tool else None,
            )
        )
    return out


# Every status `liveness` answers, in the order the fleet table lists them.
INSTANCE_STATUSES = ("live", "stale", "lost", "never")


def liveness(
    last_heartbeat_at: datetime | None, now: datetime, live_ttl: float, lost: bool = False
) -> str:
    if lost:
        return "lost"  # the sweep moved its jobs away; the agent must register again
    age = seconds_between(last_heartbeat_at, now)
    if age is None:
        return "never"
    return "live" if age <= live_ttl else "stale"
