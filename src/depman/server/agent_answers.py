"""The agent endpoints' answers as bytes, for the handlers, the memos and the quick lane.

Every path that answers an agent request (FastAPI handler, memo, quick lane)
builds its body here, so a v1 agent sees the same bytes whichever path served it.
"""

from __future__ import annotations

import json
from typing import Any

from depman.core.queue import QueuePoll, Transition


def encode(document: dict[str, Any]) -> bytes:
    """JSON as the agent endpoints answer it (compact, UTF-8)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def poll_answer(poll: QueuePoll) -> bytes:
    """`GET /dependencies/queue`: the items, and the pins (extension)."""
    return encode({"items": poll.items, "pinnedDepIds": poll.pinned_dep_ids})


def heartbeat_answer(
    pinned_dep_ids: list[str],
    static_dep_ids: list[str],
    update: dict[str, Any] | None = None,
) -> bytes:
    """`POST /dependencies/heartbeat`: ok, the pins, the profile's static deps (extensions),
    and `agentUpdate` when offered.

    `staticDepIds` is the profile's list now: a dep the agent holds as static but
    not in it has become dynamic (evictable).
    """
    document: dict[str, Any] = {
        "ok": True,
        "pinnedDepIds": pinned_dep_ids,
        "staticDepIds": static_dep_ids,
    }
    if update is not None:
        document["agentUpdate"] = update
    return encode(document)


def status_answer(result: Transition) -> bytes:
    """`POST /dependencies/status`: whether the report moved the item, and its state now.

    `clearFailedDepId` (read by field agents 0.10.105+): the server queued the dep
    again, so the agent forgets its local failure and heartbeats.
    """
    document: dict[str, Any] = {"ok": True, "applied": result.applied, "itemState": result.state}
    if result.clear_failed:
        document["clearFailedDepId"] = True
    return encode(document)
