"""Admin API of the fleet mirror: what is in it, and filling it now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from depman.core import mirror as ledger
from depman.errors import Conflict
from depman.server.deps import AdminDep, ReadSessionDep, SessionDep, StateDep
from depman.server.schemas import ErrorResponse
from depman.server.schemas.mirror import MirrorFillAnswerOut, MirrorFillIn, MirrorOut
from depman.server.state import ServerState

router = APIRouter(prefix="/api/admin/mirror", tags=["mirror"], dependencies=[AdminDep])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 409, 422)
}
# Entries whose bytes count as missing from the mirror.
NOT_STORED = ("missing", "wanted", "filling", "failed")


def entry_document(entry: ledger.MirrorEntry) -> dict[str, Any]:
    return {
        "depId": entry.dep_id,
        "sha256": entry.sha256,
        "sizeBytes": entry.size_bytes,
        "state": entry.state,
        "bytesDone": entry.bytes_done,
        "attempts": entry.attempts,
        "error": entry.error,
        "nextAttemptAt": entry.next_attempt_at,
        "storedAt": entry.stored_at,
    }


def totals(entries: list[ledger.MirrorEntry]) -> dict[str, int]:
    counted: dict[str, int] = {"storedBytes": 0, "missingBytes": 0}
    seen: set[str | None] = set()
    for entry in entries:
        counted[entry.state] = counted.get(entry.state, 0) + 1
        if entry.sha256 in seen:
            continue  # entries sharing bytes share one object
        seen.add(entry.sha256)
        if entry.state == "stored":
            counted["storedBytes"] += entry.size_bytes or 0
        elif entry.state in NOT_STORED:
            counted["missingBytes"] += entry.size_bytes or 0
    return counted


def _describe(state: ServerState) -> dict[str, Any]:
    service = state.mirror
    if service is None:
        return {"configured": False}
    return {
        "configured": True,
        "url": service.location.url,
        "writable": service.writable,
        "fillMode": service.fill_mode if service.writable else "read-only",
        "presignSeconds": state.settings.mirror_presign_seconds if service.writable else None,
        "agentHost": service.agent_host(),
    }


@router.get("", response_model=MirrorOut, responses=ERRORS)
def mirror_status(session: ReadSessionDep, state: StateDep) -> dict[str, Any]:
    """The mirror's settings, totals, and every catalog entry's state in it."""
    entries = ledger.mirror_entries(session=session)
    return {
        **_describe(state),
        "totals": totals(entries),
        "deps": [entry_document(e) for e in entries],
    }


@router.post("/fill", response_model=MirrorFillAnswerOut, responses=ERRORS)
def mirror_fill(body: MirrorFillIn, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Fill the named deps now (every catalog entry when none is named); failed ones again."""
    if state.mirror is None:
        raise Conflict("no mirror is configured (set DEPMAN_MIRROR_URL on the server)")
    answers = ledger.request_fills(body.dep_ids, session=session)
    session.commit()
    if state.fill_worker is not None:
        state.fill_worker.wake()
    accepted = [a.dep_id for a in answers if a.state is not None]
    entries = ledger.mirror_entries(session=session, dep_ids=accepted) if accepted else []
    return {
        "requested": [entry_document(e) for e in entries],
        "refused": {a.dep_id: a.reason for a in answers if a.state is None},
    }
