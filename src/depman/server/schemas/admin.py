"""Admin documents: the runbook's Firestore documents, same field names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from depman.core.dep_sources import MAX_SOURCES
from depman.server.schemas import ApiModel
from depman.server.schemas.bounds import (
    MAX_LIST_IDS,
    MAX_URL_CHARS,
    Id,
    NonNegInt64,
    PositiveInt32,
    PositiveInt64,
    SafeText,
    ShortText,
    Url,
)


class FileIn(ApiModel):
    """One file of a folder model."""

    path: SafeText
    url: Url
    sha256: ShortText | None = None
    size_bytes: PositiveInt64 | None = None


class FileOut(FileIn):
    """A file of a folder model as stored (with its resolved source)."""

    source: str | None = None
    revision: str | None = None


class SourceOut(ApiModel):
    """A further source as resolved: the download URL, the hf:// / civitai:// URL as
    written (null for an https source) and the revision it was pinned to."""

    url: str
    source: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class DepIn(ApiModel):
    """`PUT /admin/deps/{depId}`: `destRelativePath`, or `type` + `filename`."""

    url: Annotated[SafeText, Field(max_length=MAX_URL_CHARS)] = ""
    auth: ShortText = "none"
    dest_relative_path: Annotated[SafeText, Field(min_length=1)] | None = None
    sha256: ShortText | None = None
    expected_size_bytes: PositiveInt64 | None = None
    kind: ShortText = "dynamic"
    model_type: ShortText | None = Field(None, alias="type")
    filename: SafeText | None = None
    root: ShortText | None = None
    files: list[FileIn] | None = Field(None, max_length=1000)
    # Further URLs for the same bytes (https, hf://, civitai://), tried in order after `url`.
    sources: list[Url] | None = Field(None, max_length=MAX_SOURCES)


class DepOut(ApiModel):
    """A catalog entry (resolved: `source` is the hf:// / civitai:// URL as written)."""

    dep_id: str
    url: str
    auth: str
    dest_relative_path: str
    sha256: str | None = None
    expected_size_bytes: int | None = None
    kind: str
    model_type: str | None = Field(None, alias="type")
    filename: str | None = None
    root: str | None = None
    source: str | None = None
    revision: str | None = None
    files: list[FileOut] | None = None
    sources: list[str] = Field(default_factory=list)
    resolved_sources: list[SourceOut] = Field(default_factory=list)
    updated_at: str | None = None


class DepsOut(ApiModel):
    """`GET /admin/deps`."""

    deps: list[DepOut]


class DynamicPolicy(ApiModel):
    """A profile's dynamic cache policy."""

    enabled: bool | None = None
    min_free_bytes: NonNegInt64 | None = None
    max_dynamic_bytes: NonNegInt64 | None = None
    eviction_batch_max: NonNegInt64 | None = None
    pin_ttl_seconds: NonNegInt64 | None = None


class ProfileIn(ApiModel):
    """`PUT /admin/profiles/{profileId}`."""

    static_dep_ids: Annotated[list[Id], Field(max_length=MAX_LIST_IDS)] = Field(
        default_factory=list
    )
    prefetch_on_boot: bool = False
    dynamic_policy: DynamicPolicy = Field(default_factory=DynamicPolicy)
    root: ShortText | None = None


class ProfileOut(ApiModel):
    """A profile."""

    profile_id: str
    static_dep_ids: list[str]
    prefetch_on_boot: bool
    dynamic_policy: dict[str, Any]
    root: str | None = None
    updated_at: str | None = None


class ProfilesOut(ApiModel):
    """`GET /admin/profiles`."""

    profiles: list[ProfileOut]


class DepLocationOut(ApiModel):
    """One instance holding a dep, or with a download of it."""

    instance_id: str
    server_type: str
    instance_status: str
    state: str
    kind: str | None = None
    since: str | None = None
    receipt: str | None = None
    error: str | None = None


class DepLocationsOut(ApiModel):
    """`GET /admin/deps/{depId}/instances`: where the model is, and its state there."""

    dep_id: str
    instances: list[DepLocationOut]


class ModelManagement(ApiModel):
    """How a server type's models are managed."""

    mode: Annotated[ShortText, Field(max_length=50)] = "dependency_manager_v1"
    profile_id: Id | None = None
    # "open": an agent with the shared secret and an undeclared instance id enrols itself;
    # "declared": only declared instances register.
    enrollment: Literal["open", "declared"] = "open"


class ServerTypeIn(ApiModel):
    """`PUT /admin/server-types/{serverType}`; `maxActiveJobs` is depman's (default 1)."""

    model_management: ModelManagement = Field(default_factory=ModelManagement)
    max_active_jobs: PositiveInt32 = 1


class ServerTypeOut(ApiModel):
    """A server type."""

    server_type: str
    model_management: ModelManagement
    max_active_jobs: int
    updated_at: str | None = None


class ServerTypesOut(ApiModel):
    """`GET /admin/server-types`."""

    server_types: list[ServerTypeOut]


class InstanceIn(ApiModel):
    """`PUT /admin/instances/{instanceId}`."""

    ip: Annotated[ShortText, Field(max_length=64)] | None = None
    server_type: Id


class DependencyManagerOut(ApiModel):
    """The inventory of an instance's last heartbeat."""

    last_heartbeat_at: str | None = None
    installed_dep_ids_static: list[str] = Field(default_factory=list)
    installed_dep_ids_dynamic: list[str] = Field(default_factory=list)
    downloading_dep_ids: list[str] = Field(default_factory=list)
    failed_dep_ids: list[str] = Field(default_factory=list)
    disk_stats: dict[str, int | str | None] = Field(default_factory=dict)
    disk_diagnostics: dict[str, Any] | None = None
    dynamic_bytes_used: int | None = None
    queue_depth: int | None = None
    agent_version: str | None = None
    active_downloads: list[dict[str, Any]] = Field(default_factory=list)
    pinned_dep_ids: list[str] = Field(default_factory=list)
    receipts: list[dict[str, Any]] | None = Field(
        None, description="One instance only: the last verification receipt of each dep."
    )


class SourceBytesOut(ApiModel):
    """Bytes downloads received from the fleet mirror and from the upstreams."""

    mirror: int = 0
    upstream: int = 0


class InstanceOut(ApiModel):
    """An instance with its inventory."""

    instance_id: str
    ip: str | None
    server_type: str
    live: bool
    lost: bool = False
    lost_at: str | None = None
    heartbeat_age_seconds: float | None
    registered_at: str | None
    drained: bool = False
    provider: str | None = None
    provider_metadata: dict[str, Any] | None = None
    source_bytes: SourceBytesOut = Field(default_factory=SourceBytesOut)
    dependency_manager: DependencyManagerOut


class InstancesOut(ApiModel):
    """`GET /admin/instances`."""

    instances: list[InstanceOut]


class QueueItemAdmin(ApiModel):
    """A queue item as the admin sees it."""

    item_id: str
    dep_id: str
    op: str
    state: str
    attempts: int
    error: str | None
    priority: int
    generation: int
    failures: int = 0
    enqueued_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    next_attempt_at: str | None = None
    first_failed_at: str | None = None
    cancel_reason: str | None = None
    force_retry: bool = False
    force_retry_after_ms: int | None = None
    # A queued download held back: its upstream host is at its DEPMAN_UPSTREAM_CONCURRENCY cap.
    waiting_for_upstream: str | None = None


class QueueItemsOut(ApiModel):
    """`GET /admin/queues/{instanceId}/items`."""

    items: list[QueueItemAdmin]


class FleetIn(ApiModel):
    """`POST /admin/fleet`: a whole fleet upserted in one transaction."""

    deps: dict[Id, DepIn] = Field(default_factory=dict)
    profiles: dict[Id, ProfileIn] = Field(default_factory=dict)
    server_types: dict[Id, ServerTypeIn] = Field(default_factory=dict)
    instances: dict[Id, InstanceIn] = Field(default_factory=dict)


class FleetOut(ApiModel):
    """How many objects of each kind the fleet document upserted."""

    deps: int
    profiles: int
    server_types: int
    instances: int
    # Things worth knowing that did not stop the apply (entries without a sha256).
    warnings: list[str] = Field(default_factory=list)
