"""The agent endpoints' answers, encoded once: every stage of the pipeline builds its body here.

Whichever stage answers (memo, quick statements, full domain call) and whichever
front received the request (the gateway's ASGI front or a FastAPI route), a v1
agent gets the same bytes: compact UTF-8 JSON, `application/json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from depman.core.queue import QueuePoll, Transition
from depman.settings import MAX_WAIT_SECONDS

JSON_TYPE = "application/json"
# What register advertises (extensions a v1 agent ignores).
CAPABILITIES = {
    "longPoll": True,
    "maxWaitSeconds": MAX_WAIT_SECONDS,
    "pinnedDepIds": True,
    "touchResolved": True,
}
NO_JOB_CHANNEL = (
    "this control plane runs no /api/agent job channel; "
    "use the dependency protocol (/api/dependencies/*)"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """An encoded answer: status and JSON body."""

    body: bytes
    status: int = 200

    def response(self) -> Response:
        """The answer as a Starlette response (what a FastAPI route returns)."""
        return Response(self.body, status_code=self.status, media_type=JSON_TYPE)


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


def register_answer(
    instance_id: str,
    token: str,
    profile: dict[str, Any],
    update: dict[str, Any] | None,
) -> bytes:
    """`POST /dependencies/register`: the token, the profile, the capabilities (extension)
    and `agentUpdate` when offered."""
    document: dict[str, Any] = {
        "instanceId": instance_id,
        "agentToken": token,
        "profile": profile,
        "capabilities": CAPABILITIES,
    }
    if update is not None:
        document["agentUpdate"] = update
    return encode(document)


def item_answer(item: dict[str, Any]) -> Answer:
    """`GET /dependencies/queue-item` of an item the caller has."""
    return Answer(encode({"item": item}))


def no_item_answer(item_id: str, reason: str, current_item_id: str | None) -> Answer:
    """The queue-item check's 404: the error shape plus `"exists": false`, on which the
    agent drops its local retry of the item (and the generation that replaced it, if any)."""
    document: dict[str, Any] = {
        "error": {"code": "not_found", "message": f"item {item_id!r}: {reason}"},
        "exists": False,
        "item": None,
    }
    if current_item_id:
        document["currentItemId"] = current_item_id
    return Answer(encode(document), 404)


def no_job_channel_answer() -> Answer:
    """`/api/agent/*`: later field agents try a job-execution channel first; this 404 sends
    them to dependency-only mode."""
    return Answer(encode({"error": {"code": "not_found", "message": NO_JOB_CHANNEL}}), 404)
