"""Where a job goes: a pure ranking of candidates and the wait-or-place decision, no database.

Order of preference (design.md): most bytes of the job's deps already held; then
the most of its deps held (so deps of unknown size still count); least bytes
already queued there; most free disk; then instance id, for determinism.

A job goes to the best free instance unless a busy instance of its type holds
more of its bytes and would save more download time than the job is expected to
wait for it (docs/server.md, "Placement"; issue 5, benchmark 4: placing only on
free instances collapses to near-random placement at load 0.7).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# An active job that has run past the typical duration is not assumed to be about
# to finish: its instance is expected to need at least this share of it again.
OVERRUN_SHARE = 0.25


@dataclass(frozen=True)
class Candidate:
    """A live instance of the job's type, as placement sees it."""

    instance_id: str
    held_dep_ids: frozenset[str] = field(default_factory=frozenset)
    queued_bytes: int = 0
    free_bytes: int = 0
    # Seconds since each active job there was placed (busy candidates only).
    active_elapsed_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class Decision:
    """Place on `place_on`, or wait for busy `wait_for`, or neither (no free instance)."""

    place_on: Candidate | None = None
    wait_for: Candidate | None = None
    saving_s: float = 0.0
    expected_wait_s: float = 0.0


def score(candidate: Candidate, job_deps: Mapping[str, int | None]) -> tuple[int, int, int, int]:
    """Sort key of a candidate (smaller is better); `job_deps` maps dep id to size or None."""
    held = [dep for dep in job_deps if dep in candidate.held_dep_ids]
    return (-held_bytes(candidate, job_deps), -len(held), candidate.queued_bytes,
            -candidate.free_bytes)


def held_bytes(candidate: Candidate, job_deps: Mapping[str, int | None]) -> int:
    """Bytes of the job's deps the candidate already holds (unknown sizes count 0)."""
    return sum(size or 0 for dep, size in job_deps.items() if dep in candidate.held_dep_ids)


def rank_candidates(
    candidates: Iterable[Candidate], job_deps: Mapping[str, int | None]
) -> list[Candidate]:
    """Candidates best first."""
    return sorted(candidates, key=lambda c: (*score(c, job_deps), c.instance_id))


def missing_deps(candidate: Candidate, job_deps: Sequence[str]) -> list[str]:
    """The job's deps the candidate does not hold, in job order."""
    return [dep for dep in job_deps if dep not in candidate.held_dep_ids]


def typical_job_seconds(recent_durations_s: Sequence[float], default_s: float) -> float:
    """How long a job keeps its instance: the median of recent ones, else `default_s`."""
    return statistics.median(recent_durations_s) if recent_durations_s else default_s


def expected_wait_seconds(active_elapsed_s: Sequence[float], typical_s: float) -> float:
    """Until a busy instance frees a slot: the soonest of its active jobs to finish.

    Each is expected to last `typical_s`; one already past that is given another
    `OVERRUN_SHARE` of it rather than none.
    """
    if not active_elapsed_s:
        return 0.0
    return min(max(typical_s - e, OVERRUN_SHARE * typical_s) for e in active_elapsed_s)


def choose_placement(
    free: Iterable[Candidate],
    busy: Iterable[Candidate],
    job_deps: Mapping[str, int | None],
    *,
    bandwidth_bytes_per_s: float,
    max_wait_s: float,
    expected_wait_s_for: Callable[[Candidate], float],
) -> Decision:
    """The best free instance, unless waiting for a busy one saves more time than it costs.

    A busy instance is worth waiting for when it holds more of the job's bytes than
    the best free one, the download time that saves (extra bytes held / bandwidth)
    exceeds its expected wait, and that wait fits in `max_wait_s` (what is left of
    the job's allowance). Of those, the largest net saving wins. No free instance:
    no decision (the job stays pending as before). `max_wait_s <= 0`: never waits.
    """
    ranked = rank_candidates(free, job_deps)
    if not ranked:
        return Decision()
    best = ranked[0]
    if max_wait_s <= 0 or bandwidth_bytes_per_s <= 0:
        return Decision(place_on=best)
    best_held = held_bytes(best, job_deps)
    chosen: Decision | None = None
    for candidate in sorted(busy, key=lambda c: c.instance_id):
        extra = held_bytes(candidate, job_deps) - best_held
        if extra <= 0:
            continue
        saving = extra / bandwidth_bytes_per_s
        wait = expected_wait_s_for(candidate)
        if wait > max_wait_s or wait >= saving:
            continue
        if chosen is None or saving - wait > chosen.saving_s - chosen.expected_wait_s:
            chosen = Decision(wait_for=candidate, saving_s=saving, expected_wait_s=wait)
    return chosen or Decision(place_on=best)
