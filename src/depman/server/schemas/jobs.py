"""Job bodies."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from depman.server.schemas import ApiModel
from depman.server.schemas.admin import SourceBytesOut
from depman.server.schemas.bounds import CleanText, Id


class JobCreate(ApiModel):
    """`POST /jobs`."""

    server_type: Id
    dep_ids: list[Id] = Field(default_factory=list, max_length=1000)
    # A ComfyUI workflow (UI or API format): its models' deps are added to depIds.
    workflow: dict[str, Any] | None = None
    job_id: Id | None = None


class JobComplete(ApiModel):
    """`POST /jobs/{jobId}/complete`."""

    ok: bool
    error: CleanText | None = None


class JobPublic(ApiModel):
    """A job."""

    job_id: str
    server_type: str
    state: str
    instance_id: str | None
    dep_ids: list[str]
    missing_dep_ids: list[str]
    error: str | None
    placements: int
    history: list[dict[str, Any]]
    created_at: str | None
    placed_at: str | None
    ready_at: str | None
    started_at: str | None
    finished_at: str | None
    source_bytes: SourceBytesOut = Field(
        default_factory=SourceBytesOut,
        description="Bytes downloaded for the job's deps on its instance while it waited.",
    )


class JobsPublic(ApiModel):
    """`GET /jobs`."""

    jobs: list[JobPublic]
