"""The one order in which every agent request is answered, per endpoint.

Each request arrives parsed (`requests.py`). Its credentials are checked once
(`credentials.py`); then the stages are tried in order, and the first that takes
the request answers it:

| endpoint | memo (`memo.py`) | quick (`quick.py`) | full (`full.py`) |
| --- | --- | --- | --- |
| register | - | - | always |
| queue | empty queue | the poll, one `SELECT` | no instance, or quick failed |
| heartbeat | unchanged, live, nothing downloading | inventory unchanged, live | the rest |
| status | - | `running` | the other states |
| queue-item | - | - | always |

A quick stage that fails (a bug, a connection lost) is logged and the full stage
answers. A long-poll (`waitSeconds` > 0) subscribes to its instance's wake-ups
before anything reads, answers at once when items are queued, else waits, and
when woken reads again on the quick connection. The counters
`depman_agent_{memo,quick,full}_answers_total{endpoint}` say which stage answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from depman.server.agent_gateway.answers import Answer, no_job_channel_answer
from depman.server.agent_gateway.credentials import check_agent_token, check_register_secret
from depman.server.agent_gateway.full import (
    full_heartbeat,
    full_item_check,
    full_poll,
    full_register,
    full_status,
)
from depman.server.agent_gateway.memo import empty_poll_answer, unchanged_beat_answer
from depman.server.agent_gateway.quick import PollRead, quick_heartbeat, quick_poll, quick_status
from depman.server.agent_gateway.requests import Caller, ItemQuery, PollQuery
from depman.server.cache.wakeups import WakeupKind
from depman.server.schemas.agent import (
    BAD_SOURCE_REASONS,
    HeartbeatRequest,
    RegisterRequest,
    StatusRequest,
)
from depman.server.state import ServerState

if TYPE_CHECKING:
    from depman.server.metrics import Metrics

log = logging.getLogger(__name__)
# The endpoints each stage answers (the metrics' `endpoint` labels).
STAGES = {
    "memo": ("queue", "heartbeat"),
    "quick": ("queue", "heartbeat", "status"),
    "full": ("register", "queue", "heartbeat", "status", "queue_item"),
}
T = TypeVar("T")


class Pipeline:
    """The agent endpoints of one server process (see the module docstring)."""

    def __init__(self, state: ServerState, metrics: Metrics) -> None:
        self.state = state
        counters = {
            "memo": metrics.memo_answers,
            "quick": metrics.quick_answers,
            "full": metrics.full_answers,
        }
        self._answered = {
            (stage, endpoint): counters[stage].labels(endpoint)
            for stage, endpoints in STAGES.items()
            for endpoint in endpoints
        }
        self._bad_sources = metrics.bad_sources

    async def register(self, caller: Caller, body: RegisterRequest) -> Answer:
        """Check the fleet secret, then register (full stage)."""
        check_register_secret(self.state, caller)
        answer = await run_in_threadpool(full_register, self.state, body, caller.scope)
        return self._answer("full", "register", answer)

    async def poll(self, caller: Caller, query: PollQuery) -> Answer:
        """The queued items; with `waitSeconds`, wait for one."""
        state = self.state
        instance_id = query.instance_id
        wait = min(query.wait_seconds, state.settings.max_long_poll_seconds)
        # Subscribe before reading: an enqueue committed after this point wakes the wait.
        entry = state.cache.hub.subscribe(WakeupKind.INSTANCE, instance_id) if wait > 0 else None
        try:
            await check_agent_token(state, caller, instance_id)
            stage, read = await self._read_queue(instance_id, query.limit, memo=True)
            if entry is not None and not read.has_items and await state.cache.hub.wait(entry, wait):
                stage, read = await self._read_queue(instance_id, query.limit, memo=False)
        finally:
            if entry is not None:
                state.cache.hub.unsubscribe(WakeupKind.INSTANCE, instance_id, entry)
        return self._answer(stage, "queue", read.body)

    async def heartbeat(self, caller: Caller, body: HeartbeatRequest) -> Answer:
        """Record the inventory and figures; answer the pins and the static deps."""
        state = self.state
        await check_agent_token(state, caller, body.instance_id)
        answer = _memo_stage("heartbeat", unchanged_beat_answer, state, body)
        if answer is not None:
            return self._answer("memo", "heartbeat", answer)
        answer = await _quick_stage("heartbeat", quick_heartbeat, state, body, caller.scope)
        if answer is not None:
            return self._answer("quick", "heartbeat", answer)
        answer = await run_in_threadpool(full_heartbeat, state, body, caller.scope)
        return self._answer("full", "heartbeat", answer)

    async def status(self, caller: Caller, body: StatusRequest) -> Answer:
        """Move an item forward; late or repeated reports are acknowledged and ignored."""
        state = self.state
        await check_agent_token(state, caller, body.instance_id)
        for bad in body.bad_sources or ():
            reason = bad.reason if bad.reason in BAD_SOURCE_REASONS else "other"
            self._bad_sources.labels(reason).inc()
        answer = await _quick_stage("status", quick_status, state, body)
        if answer is not None:
            return self._answer("quick", "status", answer)
        answer = await run_in_threadpool(full_status, state, body)
        return self._answer("full", "status", answer)

    async def item_check(self, caller: Caller, query: ItemQuery) -> Answer:
        """One of the caller's own items (full stage), or a 404 saying it does not exist."""
        await check_agent_token(self.state, caller, query.instance_id)
        answer = await run_in_threadpool(
            full_item_check, self.state, query.instance_id, query.item_id
        )
        self._answered["full", "queue_item"].inc()
        return answer

    @staticmethod
    def no_job_channel() -> Answer:
        """`/api/agent/*`: no job channel here (no database, no credentials)."""
        return no_job_channel_answer()

    async def _read_queue(
        self, instance_id: str, limit: int, *, memo: bool
    ) -> tuple[str, PollRead]:
        if memo:
            empty = empty_poll_answer(self.state, instance_id)
            if empty is not None:
                return "memo", PollRead(empty, has_items=False)
        read = await _quick_stage("queue", quick_poll, self.state, instance_id, limit)
        if read is not None:
            return "quick", read
        return "full", await run_in_threadpool(full_poll, self.state, instance_id, limit)

    def _answer(self, stage: str, endpoint: str, body: bytes) -> Answer:
        self._answered[stage, endpoint].inc()
        return Answer(body)


def _memo_stage(endpoint: str, function: Callable[..., T | None], *args: Any) -> T | None:
    try:
        return function(*args)
    except Exception:  # never fail a request a later stage can still answer
        log.exception("agent gateway: the memo stage of %s failed; going on", endpoint)
        return None


async def _quick_stage(endpoint: str, function: Callable[..., T | None], *args: Any) -> T | None:
    try:
        return await run_in_threadpool(function, *args)
    except DBAPIError as exc:
        # The full stage answers, with its own error if the database is down.
        log.warning("agent gateway: quick %s failed (%s); going on", endpoint, type(exc).__name__)
    except Exception:
        log.exception("agent gateway: the quick stage of %s failed; going on", endpoint)
    return None
