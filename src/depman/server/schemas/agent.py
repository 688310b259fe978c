"""Bodies of the four agent endpoints (protocol v1 plus depman's optional extensions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from depman.core.inventory import Heartbeat
from depman.core.receipts import Receipt
from depman.core.reports import StatusReport
from depman.server.schemas import ApiModel


class DiskStats(ApiModel):
    """Disk figures of the ComfyUI folder's file system."""

    total_bytes: int | None = None
    free_bytes: int | None = None
    used_bytes: int | None = None


class RegisterRequest(ApiModel):
    """`POST /dependencies/register`."""

    server_type: str = Field(min_length=1, max_length=200)
    agent_version: str = Field("", max_length=200)
    instance_id: str | None = Field(None, max_length=200)
    instance_ip: str | None = Field(None, max_length=64)


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

    algorithm: str = Field("", max_length=20)
    sha256: str | None = Field(None, max_length=128)
    size_bytes: int | None = Field(None, ge=0, le=2**62)
    mtime_ns: str | int | None = None
    verified_at_ms: int | None = Field(None, ge=0, le=2**53)
    dest_relative_path: str | None = Field(None, max_length=1000)
    final_path_verified: bool = False
    agent_version: str | None = Field(None, max_length=200)

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


class StatusRequest(ApiModel):
    """`POST /dependencies/status`."""

    instance_id: str = Field(min_length=1, max_length=200)
    item_id: str = Field(min_length=1, max_length=300)
    dep_id: str | None = None
    op: str | None = None
    # `retrying` and `cancelled`: field agents 0.3.0+ and 0.9.14+ (docs/agent.md).
    state: Literal["running", "succeeded", "failed", "retrying", "cancelled"]
    disk_stats: DiskStats | None = None
    dynamic_bytes_used: int | None = None
    error: str | None = None
    verification: Verification | None = None

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
        )


class StatusResponse(ApiModel):
    """Status answer: always 200 for a well-formed report, applied or not."""

    ok: bool = True
    applied: bool
    item_state: str | None = None
    clear_failed_dep_id: bool | None = None


class ActiveDownload(ApiModel):
    """Live progress of one download (extension)."""

    dep_id: str
    bytes_done: int | None = None
    bytes_total: int | None = None
    bytes_per_second: float | None = None


class HeartbeatRequest(ApiModel):
    """`POST /dependencies/heartbeat`."""

    instance_id: str = Field(min_length=1, max_length=200)
    installed_static_dep_ids: list[str] = Field(default_factory=list)
    installed_dynamic_dep_ids: list[str] = Field(default_factory=list)
    downloading_dep_ids: list[str] = Field(default_factory=list)
    failed_dep_ids: list[str] = Field(default_factory=list)
    disk_stats: DiskStats | None = None
    dynamic_bytes_used: int | None = None
    queue_depth: int | None = None
    active_downloads: list[ActiveDownload] = Field(default_factory=list)

    def lists_key(self) -> int:
        """A cheap in-process key of the installed lists as sent (see `BeatMemo.lists_key`)."""
        return hash((tuple(self.installed_static_dep_ids), tuple(self.installed_dynamic_dep_ids)))

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
            active_downloads=[a.model_dump(by_alias=True) for a in self.active_downloads],
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
