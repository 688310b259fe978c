"""The pure ranking of placement candidates."""

from __future__ import annotations

from depman.core.placement import Candidate, missing_deps, rank_candidates


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
