"""The pure placement logic: ranking candidates, and waiting for a busy holder or not."""

from __future__ import annotations

from depman.core.placement import (
    Candidate,
    Decision,
    choose_placement,
    expected_wait_seconds,
    missing_deps,
    rank_candidates,
    typical_job_seconds,
)


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
