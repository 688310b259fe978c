"""Request and response bodies of the fleet mirror's admin API."""

from __future__ import annotations

from datetime import datetime

from depman.server.schemas import ApiModel
from depman.server.schemas.bounds import IdList


class MirrorFillIn(ApiModel):
    """`POST /api/admin/mirror/fill`: the deps to fill now (none named: every entry)."""

    dep_ids: IdList | None = None


class MirrorEntryOut(ApiModel):
    """One catalog entry as the mirror sees it."""

    dep_id: str
    sha256: str | None = None
    size_bytes: int | None = None
    # stored, wanted, filling, failed, missing (not asked for), unmirrorable.
    state: str
    bytes_done: int = 0
    attempts: int = 0
    error: str | None = None
    next_attempt_at: datetime | None = None
    stored_at: datetime | None = None


class MirrorTotalsOut(ApiModel):
    """Counts and bytes per state."""

    stored: int = 0
    stored_bytes: int = 0
    filling: int = 0
    wanted: int = 0
    failed: int = 0
    missing: int = 0
    missing_bytes: int = 0
    unmirrorable: int = 0


class MirrorOut(ApiModel):
    """`GET /api/admin/mirror`: the mirror, and every catalog entry's state in it."""

    configured: bool
    url: str | None = None
    writable: bool = False
    fill_mode: str | None = None
    presign_seconds: int | None = None
    # The host agents download mirror URLs from (add it to DM_ALLOWED_DOMAINS).
    agent_host: str | None = None
    totals: MirrorTotalsOut
    deps: list[MirrorEntryOut]


class MirrorFillAnswerOut(ApiModel):
    """What a fill request did per dep; `refused` names the deps that cannot be mirrored."""

    requested: list[MirrorEntryOut]
    refused: dict[str, str]
