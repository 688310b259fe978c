"""The periodic sweep: lost instances, stale running items, backoffs, retries, retry windows,
timeouts, pending jobs.

The sweep is a list of steps, each run in a transaction of its own (`run_sweep`):
a step's row locks are held for that step only, so an agent request that writes
one of those rows waits for one short step, never for the whole sweep. Of
several server processes sharing a PostgreSQL database, one sweeps at a time
(a transaction-level advisory lock): the others would redo the same work and
contend for the same rows. And together they sweep once per interval, not once
per interval each: the lock only keeps two sweeps apart, and each process's timer
drifts from the others' by its own sweeps' length, so N processes would sweep N
times an interval. The sweeper notes when it started (`periodic_runs`); a process
whose turn comes sooner after that leaves the sweep to the next turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, bindparam, func, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from depman.core.clock import utcnow
from depman.core.jobs import expire_jobs
from depman.core.lost import LostSweep, sweep_lost_instances
from depman.core.policy import Policy
from depman.core.queue import requeue_stale_running, wake_due_items
from depman.core.reports import on_item_failed
from depman.core.retries import expire_retry_windows
from depman.core.scheduler import place_pending_jobs
from depman.core.static_retries import retry_due_items
from depman.store.models import PeriodicRun

log = logging.getLogger(__name__)
# pg_try_advisory_xact_lock key of the sweep ("depman-sweep" as an integer).
SWEEP_LOCK_KEY = 0x6465706D616E


@dataclass
class SweepReport:
    """What one sweep did."""

    # The silent instances: those lost, and those a wide silence kept (core/lost.py).
    silence: LostSweep = field(default_factory=LostSweep)
    items_retried: int = 0
    items_failed: int = 0
    jobs_expired: int = 0
    jobs_placed: int = 0
    pending_server_types: set[str] = field(default_factory=set)
    # Another server process was sweeping: this one left the steps to it.
    skipped: bool = False
    # Seconds each step took, in order: where a slow sweep spent its time.
    step_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step of the sweep."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[name] = time.perf_counter() - started


@dataclass(frozen=True)
class SweepInput:
    """What every step of one sweep is given."""

    policy: Policy
    now: datetime
    # When this server process began to hear agents: a silence before it is the
    # server's (`sweep_lost_instances`, `requeue_stale_running`).
    listening_since: datetime | None = None


Step = Callable[[Session, SweepInput, SweepReport], None]


def _lost(session: Session, given: SweepInput, report: SweepReport) -> None:
    report.silence = sweep_lost_instances(
        session=session,
        policy=given.policy,
        now=given.now,
        listening_since=given.listening_since,
    )


def _failed_items(session: Session, given: SweepInput, report: SweepReport) -> None:
    policy, now = given.policy, given.now
    failed = requeue_stale_running(
        session=session,
        timeout_seconds=policy.running_timeout_seconds,
        max_attempts=policy.max_item_attempts,
        now=now,
        listening_since=given.listening_since,
    )
    failed += expire_retry_windows(session=session, policy=policy, now=now)
    for item in failed:
        report.items_failed += 1
        on_item_failed(
            item.instance_id,
            item.dep_id,
            item.op,
            item.error or "stale",
            session=session,
            policy=policy,
            now=now,
        )


def _retries(session: Session, given: SweepInput, report: SweepReport) -> None:
    report.items_retried = retry_due_items(session=session, now=given.now)
    wake_due_items(session=session, now=given.now)


def _expiry(session: Session, given: SweepInput, report: SweepReport) -> None:
    report.jobs_expired = expire_jobs(session=session, policy=given.policy, now=given.now)


def _placement(session: Session, given: SweepInput, report: SweepReport) -> None:
    report.jobs_placed, report.pending_server_types = place_pending_jobs(
        session=session, policy=given.policy, now=given.now
    )


STEPS: tuple[tuple[str, Step], ...] = (
    ("lost", _lost),
    ("failed_items", _failed_items),
    ("retries", _retries),
    ("expiry", _expiry),
    ("placement", _placement),
)


def _claim_turn() -> Any:
    # Start the sweep's turn unless one started within the spacing (PostgreSQL's clock,
    # so replicas on several hosts agree); committed with the guard, as the lock ends.
    insert = postgresql.insert(PeriodicRun).values(task="sweep", started_at=func.now())
    spacing = func.make_interval(0, 0, 0, 0, 0, 0, bindparam("spacing", type_=Float))
    return insert.on_conflict_do_update(
        index_elements=[PeriodicRun.task],
        set_={"started_at": insert.excluded.started_at},
        where=PeriodicRun.started_at <= func.now() - spacing,
    ).returning(PeriodicRun.task)


_CLAIM_TURN = _claim_turn()


def claim_sweep(session: Session, spacing_seconds: float = 0.0) -> bool:
    """Whether this transaction may sweep: on PostgreSQL, no other process is sweeping,
    and none started a sweep within the last `spacing_seconds`."""
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: one server process
    locked = session.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK_KEY}
    ).scalar()
    if not locked:
        return False
    if spacing_seconds <= 0:
        return True
    return session.execute(_CLAIM_TURN, {"spacing": spacing_seconds}).first() is not None


def run_sweep(
    open_session: Callable[[], AbstractContextManager[Session]],
    *,
    policy: Policy,
    now: datetime | None = None,
    spacing_seconds: float = 0.0,
    listening_since: datetime | None = None,
) -> SweepReport:
    """One sweep, each step in a transaction of its own from `open_session`.

    A first transaction holds the sweep's advisory lock until the last step has
    committed; the steps run on other connections. With `spacing_seconds`, a sweep
    started by any process within that time skips this one. `listening_since`: when
    this process began to hear agents; no instance is lost for a silence before it.
    """
    given = SweepInput(policy, now or utcnow(), listening_since)
    report = SweepReport()
    with open_session() as guard:
        if not claim_sweep(guard, spacing_seconds):
            report.skipped = True
            guard.rollback()
            return report
        for name, step in STEPS:
            with report.step(name), open_session() as session:
                step(session, given, report)
                session.commit()
        guard.commit()  # releases the lock
    return report
