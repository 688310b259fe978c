"""Where a job goes: a pure ranking of candidate instances, importable without a database.

Order of preference (design.md): most bytes of the job's deps already held; then
the most of its deps held (so deps of unknown size still count); least bytes
already queued there; most free disk; then instance id, for determinism.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """A live instance with a free job slot, as placement sees it."""

    instance_id: str
    held_dep_ids: frozenset[str] = field(default_factory=frozenset)
    queued_bytes: int = 0
    free_bytes: int = 0


def score(candidate: Candidate, job_deps: Mapping[str, int | None]) -> tuple[int, int, int, int]:
    """Sort key of a candidate (smaller is better); `job_deps` maps dep id to size or None."""
    held = [dep for dep in job_deps if dep in candidate.held_dep_ids]
    held_bytes = sum(job_deps[dep] or 0 for dep in held)
    return (-held_bytes, -len(held), candidate.queued_bytes, -candidate.free_bytes)


def rank_candidates(
    candidates: Iterable[Candidate], job_deps: Mapping[str, int | None]
) -> list[Candidate]:
    """Candidates best first."""
    return sorted(candidates, key=lambda c: (*score(c, job_deps), c.instance_id))


def missing_deps(candidate: Candidate, job_deps: Sequence[str]) -> list[str]:
    """The job's deps the candidate does not hold, in job order."""
    return [dep for dep in job_deps if dep not in candidate.held_dep_ids]
