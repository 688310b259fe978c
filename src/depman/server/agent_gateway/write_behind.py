"""Write-behind of the heartbeats the memo stage answered (`server/cache/beats.py`).

The memo stage (`memo.py`) acknowledges an unchanged heartbeat and leaves it in
`ServerState.beats`; this writes them all in one batch every
`heartbeat_flush_seconds`, in a worker thread, and once more at shutdown. Admin
reads and the dashboard of the same process flush first (`server/deps.py`), so
what this process acknowledged, its own pages show.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from starlette.concurrency import run_in_threadpool

from depman.server.cache.beats import write_beats
from depman.server.pauses import PauseWatch
from depman.server.state import ServerState
from depman.store.session import ASYNC_COMMIT

log = logging.getLogger(__name__)
# One flush at a time: two racing flushes could write an instance's beats out of order.
_FLUSH_LOCK = threading.Lock()


def flush_beats(state: ServerState) -> int:
    """Write every pending beat now; answers how many. Instances whose row refused lose memos."""
    with _FLUSH_LOCK:
        beats = state.cache.beats.take()
        if not beats:
            return 0
        try:
            with state.db.session() as session:
                if state.db.dialect == "postgresql":
                    session.execute(ASYNC_COMMIT)  # liveness only, re-sent by every agent
                outcome = write_beats(beats, session=session)
                session.commit()
        except Exception:
            # The acknowledged beats are lost; their next heartbeats go to the database.
            state.cache.memos.forget_beats(beats)
            raise
        if outcome.refused:
            state.cache.memos.forget_beats(outcome.refused)
        if outcome.skipped:
            state.cache.beats.restore(outcome.skipped)
        return len(beats) - len(outcome.skipped)


def _timed_flush(state: ServerState, pauses: PauseWatch) -> int:
    with pauses.timed("write-behind"):
        return flush_beats(state)


async def run_beat_flusher(state: ServerState, pauses: PauseWatch) -> None:
    """Flush every `heartbeat_flush_seconds` until cancelled, then once more."""
    interval = state.settings.heartbeat_flush_seconds
    try:
        while True:
            await asyncio.sleep(interval)
            if len(state.cache.beats):
                try:
                    await run_in_threadpool(_timed_flush, state, pauses)
                except Exception:
                    log.exception("writing batched heartbeats failed; retrying next interval")
    finally:
        # Shutdown: what was acknowledged is written before the engine goes.
        try:
            await asyncio.to_thread(flush_beats, state)
        except Exception:
            log.exception("writing the last batched heartbeats failed")
