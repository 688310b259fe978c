"""The memo stage: agent requests answered from this replica's memos
(`server/cache/memos.py`), without the database.

- an empty poll of an instance known to have nothing queued;
- a heartbeat whose inventory, failed list and figures are those of the memo of
  a live instance with nothing downloading: only its time is new, so it goes to
  the write-behind buffer (`write_behind.py`). Such a beat changes nothing a
  pending job could use, and nothing placement reads but the liveness time, which
  the buffer writes within `heartbeat_flush_seconds`; a beat with new disk
  figures is written before it is answered (the quick stage), so placement ranks
  on the free disk every acknowledged heartbeat reported.

The caller's token has been checked before (`credentials.py`). Memos are set only
by the database stages, after a read or write that no invalidation raced.
"""

from __future__ import annotations

import json
import time

from depman.core.clock import utcnow
from depman.core.instances import hash_token
from depman.core.inventory import SCALAR_COLUMNS, Heartbeat, inventory, inventory_digest
from depman.server.cache.beats import PendingBeat
from depman.server.schemas.agent import HeartbeatRequest
from depman.server.state import ServerState


def token_known(state: ServerState, instance_id: str, token: str | None) -> bool:
    """Whether `token` matches the memo'd hash of the instance's agent token."""
    return bool(token) and state.cache.memos.token_matches(instance_id, hash_token(token or ""))


def empty_poll_answer(state: ServerState, instance_id: str) -> bytes | None:
    """The memo'd answer of a poll of an instance known to have nothing queued."""
    return state.cache.memos.empty_answer(instance_id)


def lists_key(body: HeartbeatRequest) -> int:
    """A cheap in-process key of the installed lists as sent: the same lists again have
    the memo's digest, without building and hashing the sorted inventory."""
    return hash((tuple(body.installed_static_dep_ids), tuple(body.installed_dynamic_dep_ids)))


def figures(hb: Heartbeat) -> tuple[int | None, ...]:
    """The scalar figures of a heartbeat (SCALAR_COLUMNS order), as a memo compares them.

    A key of the telemetry (disk path and diagnostics) comes last: a beat whose
    telemetry changed is written, not only acknowledged.
    """
    telemetry = None
    if hb.disk_stats_path is not None or hb.disk_diagnostics is not None:
        telemetry = hash(json.dumps([hb.disk_stats_path, hb.disk_diagnostics], sort_keys=True))
    return (*(getattr(hb, name) for name in SCALAR_COLUMNS), telemetry)


def unchanged_beat_answer(state: ServerState, body: HeartbeatRequest) -> bytes | None:
    """Take an unchanged heartbeat of a live instance into the buffer; None: not one."""
    if state.settings.heartbeat_flush_seconds <= 0:
        return None
    if body.downloading_dep_ids or body.active_downloads:
        return None  # queue items and the dashboard's progress need the database now
    hints = state.cache.memos
    instance_id = body.instance_id
    memo = hints.beat_memo(instance_id)
    if (
        memo is None
        or memo.live_until <= time.monotonic()
        or tuple(body.failed_dep_ids) != memo.failed
    ):
        return None
    hb = body.to_core()
    if figures(hb) != memo.figures:
        return None
    key = lists_key(body)
    digest = memo.digest if key == memo.lists_key else inventory_digest(inventory(hb))
    if digest != memo.digest or not hints.extend_beat(
        instance_id, memo, state.policy.live_ttl_seconds
    ):
        return None
    state.cache.beats.add(instance_id, PendingBeat(at=utcnow(), digest=digest))
    return memo.answer


def remember_heartbeat(
    state: ServerState,
    body: HeartbeatRequest,
    hb: Heartbeat,
    digest: str,
    answer: bytes,
    seen: tuple[int, int],
) -> None:
    """After a heartbeat (`body`, as the core took it: `hb`) was written: the next one
    like it is answered from memory.

    Not while downloads are listed (their queue items need the database), nor when
    write-behind is off. `seen`: the instance's epoch before the database was read.
    """
    # A beat still in the buffer is older than this one: written later, the row
    # would refuse it, and a refusal drops the memo left here.
    state.cache.beats.discard(body.instance_id)
    if state.settings.heartbeat_flush_seconds <= 0:
        return
    if body.downloading_dep_ids or body.active_downloads:
        # The row now lists these downloads: an older memo would acknowledge the next
        # idle beat without clearing them (a cancelled download stayed shown as running).
        state.cache.memos.forget_beats([body.instance_id])
        return
    state.cache.memos.remember_beat(
        body.instance_id,
        digest=digest,
        failed=body.failed_dep_ids,
        answer=answer,
        live_seconds=state.policy.live_ttl_seconds,
        seen=seen,
        lists_key=lists_key(body),
        figures=figures(hb),
    )
