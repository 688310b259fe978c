"""The server's periodic sweep, run in a worker thread so the event loop never blocks."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from depman.core.jobs import pending_server_types
from depman.core.maintenance import SweepReport, sweep
from depman.server.state import ServerState

log = logging.getLogger(__name__)


def sweep_once(state: ServerState) -> SweepReport:
    """One sweep in its own transaction; refreshes the replica's pending hint."""
    with state.db.session() as session:
        report = sweep(session=session, policy=state.policy)
        session.commit()
    with state.db.read_session() as session:
        state.hub.pending_server_types = pending_server_types(session=session)
    return report


async def run_maintenance(state: ServerState) -> None:
    """Sweep every `maintenance_interval_seconds` until cancelled."""
    interval = state.settings.maintenance_interval_seconds
    while True:
        try:
            report = await run_in_threadpool(sweep_once, state)
            if report.instances_lost:
                log.warning(
                    "sweep: instances lost (no heartbeat for %gs): %s",
                    state.policy.instance_lost_seconds,
                    ", ".join(report.instances_lost),
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
