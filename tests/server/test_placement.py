"""Placement: the pure ranking and wait-or-place decision, then the policy on a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from depman.core.placement import (
    Candidate,
    Decision,
    choose_placement,
    expected_wait_seconds,
    missing_deps,
    rank_candidates,
    typical_job_seconds,
)
from tests.server.fleet import Agent, Fleet, make_fleet
from tests.support.server import RunningServer, postgres_database, run_server
from tests.support.wait import wait_until


def ids(ranked: list[Candidate]) -> list[str]:
    return [c.instance_id for c in ranked]


def test_most_held_bytes_wins_over_held_count() -> None:
    deps = {"small1": 10, "small2": 10, "big": 1000}
    a = Candidate("a", frozenset({"small1", "small2"}))
    b = Candidate("b", frozenset({"big"}))
    assert ids(rank_candidates([a, b], deps)) == ["b", "a"]


def test_then_least_queued_then_most_free_then_id() -> None:
    deps = {"x": 10}
    queued = Candidate("a", queued_bytes=500, free_bytes=10**9)
    roomy = Candidate("b", queued_bytes=0, free_bytes=10**9)
    tight = Candidate("c", queued_bytes=0, free_bytes=10)
    twin = Candidate("d", queued_bytes=0, free_bytes=10)
    assert ids(rank_candidates([queued, tight, twin, roomy], deps)) == ["b", "c", "d", "a"]


def test_unknown_sizes_count_by_number_held() -> None:
    deps: dict[str, int | None] = {"p": None, "q": None}
    one = Candidate("one", frozenset({"p"}))
    two = Candidate("two", frozenset({"p", "q"}))
    assert ids(rank_candidates([one, two], deps)) == ["two", "one"]
    assert missing_deps(one, ["p", "q"]) == ["q"]


GB = 10**9


def decide(
    free: list[Candidate],
    busy: list[Candidate],
    deps: dict[str, int | None],
    *,
    wait_s: float = 30.0,
    max_wait_s: float = 120.0,
    bandwidth: float = 100 * 10**6,
) -> Decision:
    return choose_placement(
        free,
        busy,
        deps,
        bandwidth_bytes_per_s=bandwidth,
        max_wait_s=max_wait_s,
        expected_wait_s_for=lambda c: wait_s,
    )


def test_waits_for_a_busy_holder_when_the_saving_beats_the_wait() -> None:
    deps: dict[str, int | None] = {"ckpt": 6 * GB, "lora": GB // 10}
    free = [Candidate("free", frozenset({"lora"}))]
    holder = Candidate("holder", frozenset({"ckpt"}))
    decision = decide(free, [holder], deps, wait_s=30.0)  # saves ~59 s of download
    assert decision.wait_for == holder and decision.place_on is None
    assert decision.saving_s == (6 * GB - GB // 10) / (100 * 10**6)
    assert decision.expected_wait_s == 30.0


def test_takes_the_free_instance_when_the_saving_is_small_or_the_wait_too_long() -> None:
    deps: dict[str, int | None] = {"ckpt": 6 * GB, "lora": GB // 10}
    free = [Candidate("free")]
    lora_holder = Candidate("lora-holder", frozenset({"lora"}))
    assert decide(free, [lora_holder], deps).place_on == free[0]  # 1 s saved, 30 s wait
    holder = Candidate("holder", frozenset({"ckpt"}))
    assert decide(free, [holder], deps, wait_s=61.0).place_on == free[0]  # wait > saving
    assert decide(free, [holder], deps, wait_s=30.0, max_wait_s=20.0).place_on == free[0]


def test_never_waits_when_a_free_instance_holds_as_much() -> None:
    deps: dict[str, int | None] = {"ckpt": 6 * GB}
    free = [Candidate("free", frozenset({"ckpt"}))]
    busy = [Candidate("busy", frozenset({"ckpt"}))]
    assert decide(free, busy, deps, wait_s=0.0).place_on == free[0]


def test_max_wait_zero_is_the_plain_ranking() -> None:
    deps: dict[str, int | None] = {"ckpt": 6 * GB, "x": 10}
    free = [Candidate("b", frozenset({"x"})), Candidate("a")]
    busy = [Candidate("holder", frozenset({"ckpt"}))]
    decision = decide(free, busy, deps, wait_s=0.0, max_wait_s=0.0)
    assert decision.place_on == rank_candidates(free, deps)[0] and decision.wait_for is None


def test_no_free_instance_is_no_decision_and_the_best_net_saving_wins() -> None:
    deps: dict[str, int | None] = {"video": 20 * GB, "ckpt": 6 * GB}
    assert decide([], [Candidate("holder", frozenset({"video"}))], deps) == Decision()
    waits = {"small": 5.0, "big": 60.0}
    decision = choose_placement(
        [Candidate("free")],
        [Candidate("small", frozenset({"ckpt"})), Candidate("big", frozenset({"video"}))],
        deps,
        bandwidth_bytes_per_s=100 * 10**6,
        max_wait_s=120.0,
        expected_wait_s_for=lambda c: waits[c.instance_id],
    )
    assert decision.wait_for is not None and decision.wait_for.instance_id == "big"  # 140 s net


def test_expected_wait_from_the_active_jobs_and_recent_durations() -> None:
    assert typical_job_seconds([], 60.0) == 60.0
    assert typical_job_seconds([10.0, 30.0, 200.0], 60.0) == 30.0
    assert expected_wait_seconds([10.0], 60.0) == 50.0
    assert expected_wait_seconds([10.0, 40.0], 60.0) == 20.0  # the first to finish frees a slot
    assert expected_wait_seconds([90.0], 60.0) == 15.0  # overran: another quarter, not zero
    assert expected_wait_seconds([], 60.0) == 0.0


# ---------------------------------------------------------------- on a real server

# 20 GB is ~190 s of download at the default 100 MiB/s: worth the default 60 s wait.
SIZES = {
    "video": (20 * GB, "dynamic"),
    "lora": (GB // 10, "dynamic"),  # ~1 s of download: never worth a wait
    "other": (GB // 10, "dynamic"),
}


def busy_holder(server: RunningServer, holds: str) -> tuple[Fleet, Agent, dict[str, Any], Agent]:
    """A fleet with an instance that holds `holds` and runs a job, and an idle empty one."""
    fleet = make_fleet(server, sizes=SIZES)
    holder = fleet.register(fleet.add_instance("holder"), dynamic=[fleet.deps[holds]])
    running = fleet.submit(["other"])[1]
    assert running["instanceId"] == holder.instance_id
    spare = fleet.register(fleet.add_instance("spare"))
    return fleet, holder, running, spare


def events(job: dict[str, Any]) -> list[str]:
    return [h["event"] for h in job["history"]]


def test_a_job_waits_for_a_busy_holder_of_a_big_dep(server: RunningServer) -> None:
    fleet, holder, running, spare = busy_holder(server, holds="video")
    status, job = fleet.submit(["video", "lora"])
    assert status == 200, job
    assert job["state"] == "pending" and job["instanceId"] is None
    waiting = job["history"][-1]
    assert waiting["event"] == "waiting" and waiting["instanceId"] == holder.instance_id
    assert spare.instance_id in waiting["reason"]
    assert waiting["savingSeconds"] > waiting["expectedWaitSeconds"] > 0
    # A younger job that gains nothing by waiting takes the free instance meanwhile,
    # and the waiting job notes its wait only once.
    other = fleet.submit(["lora"])[1]
    assert other["instanceId"] == spare.instance_id
    assert events(server.admin("GET", f"/jobs/{job['jobId']}")[1]).count("waiting") == 1
    # The holder finishes its job: the waiting job goes there, with its dep already held.
    server.admin("POST", f"/jobs/{running['jobId']}/complete", {"ok": False, "error": "cancel"})
    _, placed = server.admin("GET", f"/jobs/{job['jobId']}")
    assert placed["instanceId"] == holder.instance_id
    # video is held there (touched, not yet proven); lora is downloaded.
    assert placed["missingDepIds"] == [fleet.deps["video"], fleet.deps["lora"]]
    assert placed["history"][-1]["missingDepIds"] == [fleet.deps["lora"]]
    assert events(placed)[-3:] == ["submitted", "waiting", "placed"]
    assert placed["history"][-1]["waitedSeconds"] >= 0


def test_a_job_does_not_wait_when_the_saving_is_small(server: RunningServer) -> None:
    fleet, _holder, _running, spare = busy_holder(server, holds="lora")
    job = fleet.submit(["lora"])[1]
    assert job["instanceId"] == spare.instance_id and job["state"] == "waiting_deps"
    assert "waiting" not in events(job)


SHORT_WAIT_ENV = {
    "DEPMAN_PLACEMENT_MAX_WAIT_SECONDS": "1",
    "DEPMAN_PLACEMENT_DEFAULT_JOB_SECONDS": "0.5",
    "DEPMAN_MAINTENANCE_INTERVAL_SECONDS": "0.2",
}
NO_WAIT_ENV = {"DEPMAN_PLACEMENT_MAX_WAIT_SECONDS": "0"}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("sqlite", SHORT_WAIT_ENV), id="sqlite-short-wait"),
        pytest.param(("postgresql", SHORT_WAIT_ENV), id="postgresql-short-wait"),
        pytest.param(("sqlite", NO_WAIT_ENV), id="sqlite-no-wait"),
        pytest.param(("postgresql", NO_WAIT_ENV), id="postgresql-no-wait"),
    ],
)
def tuned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    """A server with a short max wait and a fast sweep, or with waits off; both backends."""
    backend, env = request.param
    tmp = tmp_path_factory.mktemp("placement")
    if backend == "sqlite":
        with run_server(f"sqlite:///{tmp / 'd.db'}", extra_env=env, cwd=tmp) as server:
            yield server, env
    else:
        with postgres_database() as url, run_server(url, extra_env=env, cwd=tmp) as server:
            yield server, env


def test_a_wait_past_max_goes_to_a_free_instance_and_max_wait_zero_never_waits(
    tuned: tuple[RunningServer, dict[str, str]],
) -> None:
    server, env = tuned
    fleet, holder, _running, spare = busy_holder(server, holds="video")
    submitted = time.monotonic()
    job = fleet.submit(["video"])[1]
    if env["DEPMAN_PLACEMENT_MAX_WAIT_SECONDS"] == "0":
        assert job["instanceId"] == spare.instance_id and "waiting" not in events(job)
        return
    assert job["state"] == "pending" and job["history"][-1]["instanceId"] == holder.instance_id

    def placed() -> dict[str, Any] | None:
        body = server.admin("GET", f"/jobs/{job['jobId']}")[1]
        return body if body["state"] != "pending" else None

    # The holder stays busy: once the 1 s allowance is spent, a sweep places it.
    done = wait_until(placed, 10, "the job to be placed")
    assert time.monotonic() - submitted >= 0.5
    assert done["instanceId"] == spare.instance_id and done["state"] == "waiting_deps"
    assert events(done).count("waiting") == 1 and events(done)[-1] == "placed"
    assert 0.5 <= done["history"][-1]["waitedSeconds"] <= 5
