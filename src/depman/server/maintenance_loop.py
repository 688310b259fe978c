"""The server's periodic sweep, run in a worker thread so the event loop never blocks."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from depman.core.clock import utcnow
from depman.core.jobs import pending_server_types
from depman.core.lost import LostSweep
from depman.core.maintenance import SweepReport, run_sweep
from depman.server.pauses import PauseWatch
from depman.server.state import ServerState
from depman.server.warn_limit import WarnLimiter

log = logging.getLogger(__name__)


# Of the interval, how long after any process's sweep started this one's turn is left to
# the next: less than the whole, so that a timer firing a little early still sweeps.
SWEEP_SPACING_SHARE = 0.8


def sweep_once(state: ServerState, listening_since: datetime | None = None) -> SweepReport:
    """One sweep, step by step (`core.maintenance`); refreshes the replica's pending hint."""
    spacing = state.settings.maintenance_interval_seconds * SWEEP_SPACING_SHARE
    report = run_sweep(
        state.db.session,
        policy=state.policy,
        spacing_seconds=spacing,
        listening_since=listening_since,
    )
    with state.db.read_session() as session, report.step("pending_hint"):
        state.cache.pending.refresh(pending_server_types(session=session))
    return report


def _timed_sweep(
    state: ServerState, pauses: PauseWatch, listening_since: datetime
) -> SweepReport:
    started = time.perf_counter()
    report = sweep_once(state, listening_since)
    if not report.skipped:
        pauses.observe_task("sweep", time.perf_counter() - started, report.step_seconds)
    return report


async def run_maintenance(state: ServerState, pauses: PauseWatch) -> None:
    """Sweep every `maintenance_interval_seconds` until cancelled."""
    interval = state.settings.maintenance_interval_seconds
    # Silence from before this process listened is not the agents' (the server was down).
    listening_since = utcnow()
    warnings = WarnLimiter(log)
    while True:
        try:
            report = await run_in_threadpool(_timed_sweep, state, pauses, listening_since)
            _warn_of_wide_silence(state, report.silence, warnings)
            if report.silence.lost:
                log.warning(
                    "sweep: instances lost (no heartbeat for %gs): %s",
                    state.policy.instance_lost_seconds,
                    ", ".join(report.silence.lost),
                )
            if report.items_failed or report.jobs_expired or report.jobs_placed:
                log.info(
                    "sweep: %d items failed, %d jobs expired, %d jobs placed",
                    report.items_failed,
                    report.jobs_expired,
                    report.jobs_placed,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("maintenance sweep failed; retrying next interval")
        await asyncio.sleep(interval)


def _warn_of_wide_silence(state: ServerState, silence: LostSweep, warnings: WarnLimiter) -> None:
    """A sweep kept the instances of a wide silence (each is kept again at every sweep
    while it lasts, so the warning is rate-limited)."""
    if not silence.held:
        return
    policy = state.policy
    warnings.warn(
        "wide silence",
        "sweep: %d of %d registered instances quiet at once, %d of them silent past %gs: "
        "taken for the server's or its network's silence, none is lost before %gs of "
        "silence (lost_wide_silence_seconds)",
        silence.quiet,
        silence.registered,
        silence.held + len(silence.lost),
        policy.instance_lost_seconds,
        max(policy.lost_wide_silence_seconds, policy.instance_lost_seconds),
    )
