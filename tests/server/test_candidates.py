"""Candidate selection: the bounded queries find exactly the best instances a full scan would."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert

from depman.core.candidates import busy_holders, find_candidates
from depman.core.clock import utcnow
from depman.core.placement import Candidate, rank_candidates
from depman.store.migrate import upgrade
from depman.store.models import Dep, Instance, InstanceDep, Job, QueueItem, ServerType
from depman.store.session import Database, open_database

STYPE = "gpu"
DEPS = {f"d{i}": (i % 4) * 1000 or None for i in range(12)}  # some sizes unknown


def catalog_dep(dep_id: str, size: int | None, now: datetime) -> Dep:
    """A dynamic dep of the catalog (`size` None: unknown)."""
    return Dep(
        dep_id=dep_id,
        url="https://hf.co/x",
        auth="none",
        dest_relative_path=f"models/{dep_id}",
        expected_size_bytes=size,
        kind="dynamic",
        created_at=now,
        updated_at=now,
    )


@pytest.fixture
def fleet_db(database_url: str) -> Iterator[tuple[Database, list[Candidate], set[str]]]:
    """120 instances with random inventories, free disk, open downloads and active jobs."""
    upgrade(database_url)
    db = open_database(database_url)
    rng = random.Random(7)
    now = utcnow()
    truth: list[Candidate] = []
    busy: set[str] = set()
    with db.session() as session:
        session.add(
            ServerType(
                server_type=STYPE, mode="dependency_manager_v1", max_active_jobs=1, updated_at=now
            )
        )
        session.add_all(catalog_dep(d, size, now) for d, size in DEPS.items())
        session.flush()
        for i in range(120):
            iid = f"i-{i:03d}" if i % 7 else f"I-{i:03d}"  # mixed case: str order ties
            stale = i % 11 == 0
            session.add(
                Instance(
                    instance_id=iid,
                    server_type=STYPE,
                    created_at=now,
                    last_heartbeat_at=now - timedelta(seconds=500 if stale else 1),
                    disk_free_bytes=rng.choice([None, 10, 20, 30]),
                    downloading_dep_ids=[],
                    failed_dep_ids=[],
                    active_downloads=[],
                    pinned_dep_ids=[],
                )
            )
            session.flush()
            held = set(rng.sample(sorted(DEPS), rng.randint(0, 4)))
            if held:
                session.execute(
                    insert(InstanceDep),
                    [
                        {"instance_id": iid, "dep_id": d, "kind": "dynamic", "since": now}
                        for d in held
                    ],
                )
            queued = 0
            if rng.random() < 0.2:
                dep = rng.choice(sorted(set(DEPS) - held))
                session.add(
                    QueueItem(
                        instance_id=iid,
                        dep_id=dep,
                        generation=1,
                        op="download",
                        state="queued",
                        priority=0,
                        attempts=0,
                        enqueued_at=now,
                        updated_at=now,
                    )
                )
                queued = DEPS[dep] or 0
            if rng.random() < 0.15:
                busy.add(iid)
                session.add(
                    Job(
                        job_id=f"job-{iid}",
                        server_type=STYPE,
                        state="running",
                        instance_id=iid,
                        placements=1,
                        history=[],
                        created_at=now,
                        placed_at=now,
                        updated_at=now,
                    )
                )
            if not stale:
                free = session.get(Instance, iid).disk_free_bytes  # type: ignore[union-attr]
                truth.append(Candidate(iid, frozenset(held), queued, int(free or 0)))
        session.commit()
    yield db, truth, busy
    db.dispose()


def free_truth(truth: list[Candidate], busy: set[str], job: list[str]) -> list[Candidate]:
    """The fleet's free instances as placement sees them for `job` (its deps only held)."""
    return [
        replace(c, held_dep_ids=c.held_dep_ids & set(job))
        for c in truth
        if c.instance_id not in busy
    ]


@pytest.mark.parametrize("job", [["d3", "d7"], ["d1"], ["d0", "d4", "d8", "d11"], []])
def test_free_candidates_match_a_full_ranking(
    fleet_db: tuple[Database, list[Candidate], set[str]], job: list[str]
) -> None:
    db, truth, busy = fleet_db
    sizes = {d: DEPS[d] for d in job}
    free = free_truth(truth, busy, job)
    expected = rank_candidates(free, sizes)
    cutoff = utcnow() - timedelta(seconds=90)
    with db.read_session() as session:
        for limit in (1, 5, 32):
            got = find_candidates(
                STYPE, sizes, (), session=session, cutoff=cutoff, limit=limit, slots=1
            ).free
            assert got == expected[:limit]
        excluded = {expected[0].instance_id}
        got = find_candidates(
            STYPE, sizes, excluded, session=session, cutoff=cutoff, slots=1
        ).free
        assert got == [c for c in expected if c.instance_id not in excluded][:32]


def test_busy_holders_are_the_live_full_instances_holding_a_dep(
    fleet_db: tuple[Database, list[Candidate], set[str]],
) -> None:
    db, truth, busy = fleet_db
    job = ["d2", "d5"]
    now = utcnow()
    with db.read_session() as session:
        sizes = {d: DEPS[d] for d in job}
        found = find_candidates(
            STYPE, sizes, (), session=session, cutoff=now - timedelta(seconds=90), slots=1
        )
        got = busy_holders(found.busy_held, session=session, now=now, slots=1)
    expected = {
        c.instance_id: c.held_dep_ids & set(job)
        for c in truth
        if c.instance_id in busy and c.held_dep_ids & set(job)
    }
    assert {c.instance_id: c.held_dep_ids for c in got} == expected
    assert all(len(c.active_elapsed_s) == 1 for c in got)


def test_failing_instances_rank_after_every_healthy_one(
    fleet_db: tuple[Database, list[Candidate], set[str]],
) -> None:
    """The best five and every seventh further down failed all their recent downloads:
    every limit still gets exactly the full ranking's first ones, failing ones last."""
    db, truth, busy = fleet_db
    job = ["d3", "d7"]
    sizes = {d: DEPS[d] for d in job}
    free = free_truth(truth, busy, job)
    best_first = rank_candidates(free, sizes)
    failing = {c.instance_id for c in best_first[:5] + best_first[5::7]}
    now = utcnow()
    with db.session() as session:
        broken = [f"broken-{n}" for n in range(2)]
        session.add_all(catalog_dep(dep_id, None, now) for dep_id in broken)
        session.flush()
        session.add_all(
            QueueItem(
                instance_id=instance_id,
                dep_id=dep_id,
                generation=1,
                op="download",
                state="failed",
                priority=0,
                attempts=1,
                error="HTTP 401",
                enqueued_at=now,
                updated_at=now,
                finished_at=now,
            )
            for instance_id in failing
            for dep_id in broken
        )
        session.commit()
    expected = rank_candidates([replace(c, failing=c.instance_id in failing) for c in free], sizes)
    assert [c.failing for c in expected[: len(free) - len(failing)]] == [False] * (
        len(free) - len(failing)
    )
    cutoff = now - timedelta(seconds=90)
    with db.read_session() as session:
        for limit in (1, 5, 32, len(free)):
            got = find_candidates(
                STYPE, sizes, (), session=session, cutoff=cutoff, limit=limit, slots=1
            ).free
            assert got == expected[:limit]


def test_a_job_of_many_deps_gets_each_holders_deps_exactly(
    fleet_db: tuple[Database, list[Candidate], set[str]],
) -> None:
    """What a holder holds comes back as bit sets of 62 deps each: a job of 130 deps
    spans three of them, and each holder's deps are still exactly its own."""
    db, truth, busy = fleet_db
    now = utcnow()
    many = [f"m{i:03d}" for i in range(130)]
    free = [c for c in truth if c.instance_id not in busy]
    holdings = {
        free[0].instance_id: {"m000", "m061", "m062", "m123", "m124", "m129"},
        free[1].instance_id: set(many),
        free[2].instance_id: {"m063"},
    }
    with db.session() as session:
        session.add_all(catalog_dep(d, 7, now) for d in many)
        session.flush()
        session.execute(
            insert(InstanceDep),
            [
                {"instance_id": iid, "dep_id": d, "kind": "dynamic", "since": now}
                for iid, deps in holdings.items()
                for d in deps
            ],
        )
        session.commit()
    with db.read_session() as session:
        got = find_candidates(
            STYPE,
            dict.fromkeys(many, 7),
            (),
            session=session,
            cutoff=now - timedelta(seconds=90),
            slots=1,
        ).free
    assert [c.instance_id for c in got[:3]] == [
        free[1].instance_id, free[0].instance_id, free[2].instance_id
    ]
    assert {c.instance_id: set(c.held_dep_ids) for c in got[:3]} == holdings
    assert all(not c.held_dep_ids for c in got[3:])
