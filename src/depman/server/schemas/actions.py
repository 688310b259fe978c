"""Bodies of the operator actions (`/api/admin/...` POSTs) and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from depman.server.schemas import ApiModel
from depman.server.schemas.bounds import SafeText


class CancelIn(ApiModel):
    """Cancel a queue item or a job."""

    reason: Annotated[SafeText, Field(min_length=1, max_length=300)] = "cancelled by operator"


class RetryIn(ApiModel):
    """Retry a failed item now, or after `afterMs`."""

    after_ms: int | None = Field(None, ge=0, le=24 * 3600 * 1000)


class DeleteDepIn(ApiModel):
    """Delete a dep's file from an instance; static or pinned deps need `force`."""

    force: bool = False


class DrainIn(ApiModel):
    """Drain (true) or reopen (false) an instance."""

    drained: bool = True


class ActionOut(ApiModel):
    """One audit row."""

    id: int
    at: str | None
    actor: str
    action: str
    instance_id: str | None = None
    dep_id: str | None = None
    job_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class ActionsOut(ApiModel):
    """`GET /api/admin/actions`."""

    actions: list[ActionOut]
