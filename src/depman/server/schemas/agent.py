"""Bodies of the four agent endpoints (protocol v1 plus depman's optional extensions)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from depman.core.inventory import Heartbeat
from depman.core.receipts import Receipt
from depman.core.reports import StatusReport
from depman.server.logsafe import quoted
from depman.server.schemas import ApiModel
from depman.server.schemas.bounds import (
    MAX_BAD_SOURCES,
    MAX_HOST_CHARS,
    MAX_LIST_IDS,
    CleanText,
    HostText,
    Id,
    IdList,
    NonNegFloat,
    NonNegInt32,
    NonNegInt64,
    SafeText,
    ShortText,
    TelemetryDoc,
    TelemetryText,
    WellFormedItemId,
)
from depman.server.schemas.telemetry import TelemetryCarrier

# Telemetry: trimmed, never refused (see bounds.py). The caps are the columns' widths.
ProviderText = Annotated[str, TelemetryText("provider", 100)]
ProviderMetadata = Annotated[dict[str, Any] | None, TelemetryDoc("providerMetadata")]
DiskPathText = Annotated[str, TelemetryText("diskStats.path", 1000)]
DiskStatPathText = Annotated[str, TelemetryText("diskStats.statPath", 1000)]
DiskDiagnostics = Annotated[dict[str, Any] | None, TelemetryDoc("diskDiagnostics")]
StageText = Annotated[str, TelemetryText("activeDownloads.stage", 50)]
ToolText = Annotated[str, TelemetryText("activeDownloads.tool", 100)]
ServedHost = Annotated[str, TelemetryText("servedBy.host", MAX_HOST_CHARS)]


class DiskStats(ApiModel):
    """Disk figures of the ComfyUI folder's file system."""

    total_bytes: NonNegInt64 | None = None
    free_bytes: NonNegInt64 | None = None
    used_bytes: NonNegInt64 | None = None
    # Field agents 0.9.16+: which folder was measured (kept and shown).
    path: DiskPathText | None = None
    stat_path: DiskStatPathText | None = None


class RegisterRequest(TelemetryCarrier):
    """`POST /dependencies/register`."""

    server_type: Id
    agent_version: Annotated[ShortText, Field(max_length=100)] = ""
    instance_id: Id | None = None
    instance_ip: Annotated[ShortText, Field(max_length=64)] | None = None
    # Field agents 0.9.20+: the cloud provider and its ids for the instance.
    provider: ProviderText | None = None
    provider_metadata: ProviderMetadata = None

    def telemetry_source(self) -> str:
        """The instance by its id, else by its address, else its server type."""
        if self.instance_id:
            return super().telemetry_source()
        if self.instance_ip:
            return f"instanceIp={quoted(self.instance_ip)}"
        return f"serverType={quoted(self.server_type)}"


class AgentUpdate(ApiModel):
    """A published agent build this agent should run (field agents 0.6.0+, depman's agent)."""

    target_version: str
    download_url: str
    sha256: str


class RegisterResponse(ApiModel):
    """Register answer; `capabilities` is an extension a v1 agent ignores."""

    instance_id: str
    agent_token: str
    profile: dict[str, Any]
    capabilities: dict[str, Any]
    agent_update: AgentUpdate | None = None


class Resolved(ApiModel):
    """Where a dep comes from and where it goes."""

    url: str | None = None
    auth: str | None = None
    dest_relative_path: str
    sha256: str | None = None
    expected_size_bytes: int | None = None
    kind: str
    # depman extension: further URLs for the same bytes, tried in order after `url`.
    sources: list[str] | None = None


class QueueItemOut(ApiModel):
    """One item handed to the agent."""

    item_id: str
    dep_id: str
    op: Literal["download", "touch", "delete"]
    resolved: Resolved
    force_retry: bool | None = None
    force_retry_after_ms: int | None = None


class QueueResponse(ApiModel):
    """Queue answer; `pinnedDepIds` is an extension."""

    items: list[QueueItemOut]
    pinned_dep_ids: list[str] = Field(default_factory=list)


class Verification(ApiModel):
    """The receipt of a `succeeded` report (the shape later field agents send).

    Lenient on purpose: a receipt the server cannot use proves nothing, but the
    report it came with still moves its item.
    """

    # Text is cleaned of control characters rather than refused (see CleanText).
    algorithm: Annotated[CleanText, Field(max_length=20)] = ""
    sha256: Annotated[CleanText, Field(max_length=128)] | None = None
    size_bytes: int | None = Field(None, ge=0, le=2**62)
    mtime_ns: Annotated[CleanText, Field(max_length=40)] | int | None = None
    verified_at_ms: int | None = Field(None, ge=0, le=2**53)
    dest_relative_path: Annotated[CleanText, Field(max_length=1000)] | None = None
    final_path_verified: bool = False
    agent_version: Annotated[CleanText, Field(max_length=200)] | None = None

    def to_core(self) -> Receipt:
        """The receipt as the core keeps it (an mtime that is no integer is dropped)."""
        mtime = self.mtime_ns
        if isinstance(mtime, str):
            mtime = int(mtime) if mtime.isascii() and mtime.isdigit() and len(mtime) <= 19 else None
        return Receipt(
            algorithm=self.algorithm,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            mtime_ns=mtime if mtime is not None and 0 <= mtime < 2**63 else None,
            verified_at_ms=self.verified_at_ms,
            dest_relative_path=self.dest_relative_path,
            final_path_verified=self.final_path_verified,
            agent_version=self.agent_version,
        )


class QueueItemCheck(ApiModel):
    """One item as the queue-item check answers it (field agents 0.9.14+)."""

    item_id: str
    dep_id: str
    op: str
    state: str
    attempts: int = 0
    error: str | None = None
    cancel_reason: str | None = None
    force_retry: bool = False
    force_retry_after_ms: int | None = None
    next_attempt_at: str | None = None
    resolved: dict[str, Any]


class QueueItemCheckResponse(ApiModel):
    """`GET /dependencies/queue-item`."""

    item: QueueItemCheck


class ServedBy(ApiModel):
    """Which kind of source served a `succeeded` download (depman's agent).

    `kind` is mirror or upstream; another value (a later agent's) is kept out of the
    accounting, never refused: the report it rides on must not be lost.
    """

    kind: ShortText
    host: ServedHost | None = None


class BytesBySource(ApiModel):
    """Bytes one attempt received from each kind of source (depman's agent)."""

    mirror: NonNegInt64 = 0
    upstream: NonNegInt64 = 0


# What a depman agent reports as why it gave up on a source (docs/agent.md).
BAD_SOURCE_REASONS = frozenset({
    "http_429", "http_5xx", "http_4xx", "connection", "stalled", "not_the_file",
    "size_mismatch", "sha256_mismatch",
})


class BadSource(ApiModel):
    """A source given up on: its host and why (`http_429`, `sha256_mismatch`, ...)."""

    host: HostText
    reason: ShortText


class StatusRequest(TelemetryCarrier):
    """`POST /dependencies/status`."""

    instance_id: Id
    item_id: WellFormedItemId
    dep_id: Id | None = None
    op: ShortText | None = None
    # `retrying` and `cancelled`: field agents 0.3.0+ and 0.9.14+ (docs/agent.md).
    state: Literal["running", "succeeded", "failed", "retrying", "cancelled"]
    disk_stats: DiskStats | None = None
    dynamic_bytes_used: NonNegInt64 | None = None
    error: CleanText | None = None
    verification: Verification | None = None
    # depman agents: where the bytes came from, and the sources given up on.
    served_by: ServedBy | None = None
    bytes_by_source: BytesBySource | None = None
    bad_sources: Annotated[list[BadSource], Field(max_length=MAX_BAD_SOURCES)] | None = None

    def to_core(self) -> StatusReport:
        """The report as the core applies it."""
        disk = self.disk_stats
        return StatusReport(
            item_id=self.item_id,
            state=self.state,
            dep_id=self.dep_id,
            op=self.op,
            error=self.error,
            disk_total_bytes=disk.total_bytes if disk else None,
            disk_free_bytes=disk.free_bytes if disk else None,
            disk_used_bytes=disk.used_bytes if disk else None,
            dynamic_bytes_used=self.dynamic_bytes_used,
            receipt=self.verification.to_core() if self.verification else None,
            served_by=self.served_by.kind if self.served_by else None,
            mirror_bytes=self.bytes_by_source.mirror if self.bytes_by_source else None,
            upstream_bytes=self.bytes_by_source.upstream if self.bytes_by_source else None,
        )


class StatusResponse(ApiModel):
    """Status answer: always 200 for a well-formed report, applied or not."""

    ok: bool = True
    applied: bool
    item_state: str | None = None
    clear_failed_dep_id: bool | None = None


class ActiveDownload(ApiModel):
    """Live progress of one download (extension), in the field agents' names (0.7.9+).

    depman's agents before 0.2 sent `bytesDone`, `bytesTotal`, `bytesPerSecond`;
    they are still read, and stored under the field agents' names.
    """

    dep_id: Id
    stage: StageText | None = None
    downloaded_bytes: NonNegInt64 | None = None
    expected_bytes: NonNegInt64 | None = None
    throughput_bytes_per_sec: NonNegFloat | None = None
    started_at_ms: NonNegInt64 | None = None
    updated_at_ms: NonNegInt64 | None = None
    tool: ToolText | None = None
    dest_relative_path: Annotated[SafeText, Field(max_length=1000)] | None = None
    bytes_done: NonNegInt64 | None = None
    bytes_total: NonNegInt64 | None = None
    bytes_per_second: NonNegFloat | None = None

    def stored(self) -> dict[str, Any]:
        """The row as kept and shown: one vocabulary, absent fields left out."""
        row: dict[str, Any] = {
            "depId": self.dep_id,
            "stage": self.stage,
            "downloadedBytes": _first(self.downloaded_bytes, self.bytes_done),
            "expectedBytes": _first(self.expected_bytes, self.bytes_total),
            "throughputBytesPerSec": _first(self.throughput_bytes_per_sec, self.bytes_per_second),
            "startedAtMs": self.started_at_ms,
            "updatedAtMs": self.updated_at_ms,
            "tool": self.tool,
            "destRelativePath": self.dest_relative_path,
        }
        return {key: value for key, value in row.items() if value is not None}


def _first(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback


class HeartbeatRequest(TelemetryCarrier):
    """`POST /dependencies/heartbeat`."""

    instance_id: Id
    installed_static_dep_ids: IdList = Field(default_factory=list)
    installed_dynamic_dep_ids: IdList = Field(default_factory=list)
    downloading_dep_ids: IdList = Field(default_factory=list)
    failed_dep_ids: IdList = Field(default_factory=list)
    disk_stats: DiskStats | None = None
    dynamic_bytes_used: NonNegInt64 | None = None
    queue_depth: NonNegInt32 | None = None
    active_downloads: Annotated[list[ActiveDownload], Field(max_length=MAX_LIST_IDS)] = Field(
        default_factory=list
    )
    disk_diagnostics: DiskDiagnostics = None

    def to_core(self) -> Heartbeat:
        """The heartbeat as the core records it."""
        disk = self.disk_stats
        return Heartbeat(
            installed_static=self.installed_static_dep_ids,
            installed_dynamic=self.installed_dynamic_dep_ids,
            downloading=self.downloading_dep_ids,
            failed=self.failed_dep_ids,
            disk_total_bytes=disk.total_bytes if disk else None,
            disk_free_bytes=disk.free_bytes if disk else None,
            disk_used_bytes=disk.used_bytes if disk else None,
            dynamic_bytes_used=self.dynamic_bytes_used,
            queue_depth=self.queue_depth,
            active_downloads=[a.stored() for a in self.active_downloads],
            disk_stats_path=(disk.path or disk.stat_path) if disk else None,
            disk_diagnostics=self.disk_diagnostics,
        )


class HeartbeatResponse(ApiModel):
    """Heartbeat answer; `pinnedDepIds` and `staticDepIds` are extensions."""

    ok: bool = True
    pinned_dep_ids: list[str] = Field(default_factory=list)
    static_dep_ids: list[str] = Field(
        default_factory=list,
        description="The profile's static deps now: one the agent holds as static but not "
        "listed here has become dynamic (evictable).",
    )
    agent_update: AgentUpdate | None = None
