"""Piece planning, hand-out order, tail splitting and sidecar ranges (pieces.py)."""

from __future__ import annotations

import itertools

from depman.agent.pieces import (
    MIN_STEAL_BYTES,
    PieceBoard,
    missing,
    plan_pieces,
    resume_ranges,
)

MiB = 1024 * 1024


def never() -> bool:
    return False


def test_plan_ramps_up_then_shrinks_to_the_minimum() -> None:
    total = 1024 * MiB
    pieces = plan_pieces([(0, total)], 8, 16 * MiB)
    assert pieces[0].start == 0 and pieces[-1].end == total
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    sizes = [p.end - p.start for p in pieces]
    ramp, rest = sizes[:8], sizes[8:]
    # The first wave is staggered so its pieces finish one after another.
    assert ramp == sorted(ramp) and ramp[0] == 4 * MiB and ramp[-1] > 6 * ramp[0]
    assert all(a >= b - 1 for a, b in itertools.pairwise(rest))  # then big first, shrinking
    assert all(16 * MiB <= s < 17 * MiB for s in rest[-8:])  # down to the minimum
    assert len(pieces) > 8 * 4  # several per connection


def test_plan_splits_the_rest_evenly_and_respects_gaps() -> None:
    gaps = [(0, 5 * MiB + 100), (9 * MiB, 10 * MiB)]
    pieces = plan_pieces(gaps, 2, MiB)
    assert [(p.start, p.end) for p in pieces][-1] == (9 * MiB, 10 * MiB)
    first_gap = [p for p in pieces if p.end <= 5 * MiB + 100]
    assert first_gap[-1].end == 5 * MiB + 100
    assert all(p.end - p.start >= MiB for p in first_gap)  # no 100-byte straggler
    assert sum(p.end - p.start for p in pieces) == 6 * MiB + 100


def test_pieces_are_handed_out_in_file_order() -> None:
    board = PieceBoard(64 * MiB, [], 4, MiB)
    starts = []
    while (piece := board.take()) is not None and piece.start not in starts:
        starts.append(piece.start)
        board.advance(piece, piece.end - piece.start, MiB, never)
        board.hashed_to(board.contiguous())
    assert starts == sorted(starts) and len(starts) == len(board.pieces)
    assert board.contiguous() == 64 * MiB


def test_an_idle_worker_splits_the_largest_piece_in_flight() -> None:
    board = PieceBoard(8 * MiB, [], 1, 4 * MiB)
    first, second = board.take(), board.take()
    assert first is not None and second is not None
    assert (first.start, first.end, second.start, second.end) == (0, 4 * MiB, 4 * MiB, 8 * MiB)
    board.advance(first, 4 * MiB, MiB, never)  # first done; second has 1 MiB in progress
    assert board.advance(second, 0, MiB, never) == MiB
    stolen = board.take()
    assert stolen is not None
    # Cut in the middle of what the owner has not reserved yet: [5 MiB, 8 MiB) -> 6.5 MiB.
    assert (stolen.start, stolen.end) == (6 * MiB + MiB // 2, 8 * MiB)
    assert second.end == stolen.start and board.steals == 1
    # The owner is told to stop at the cut.
    board.advance(second, MiB, MiB, never)
    board.advance(second, MiB, MiB, never)
    assert board.advance(second, MiB // 2, MiB, never) == 0
    assert [p.start for p in board.pieces] == sorted(p.start for p in board.pieces)


def test_small_remainders_are_not_split() -> None:
    board = PieceBoard(2 * MiB, [], 2, MiB)
    one, two = board.take(), board.take()
    assert one is not None and two is not None
    board.advance(one, MiB, MiB, never)
    assert MiB < 2 * MIN_STEAL_BYTES and board.take() is None


def test_when_the_hash_lags_only_the_leading_piece_goes_on() -> None:
    board = PieceBoard(128 * MiB, [], 1, 64 * MiB)
    lead, behind = board.take(), board.take()
    assert lead is not None and behind is not None and lead.start < behind.start
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    # 40 MiB contiguous and nothing hashed: over the lag bound. The leading piece
    # extends the prefix, so it goes on; the one behind it waits (here: until stopped).
    assert board.advance(lead, 40 * MiB, MiB, never) == MiB
    board.advance(behind, 0, MiB, stop_after_two)
    assert len(calls) == 3
    # A piece's last chunk never waits (its worker goes on to take the next piece).
    assert board.advance(behind, 64 * MiB, MiB, stop_after_two) == 0
    assert len(calls) == 3
    board.hashed_to(40 * MiB)
    assert board.advance(lead, 0, MiB, never) == MiB


def test_have_merges_and_resume_reads_it_back() -> None:
    board = PieceBoard(10 * MiB, [(0, 2 * MiB)], 2, MiB)
    piece = board.take()
    assert piece is not None and piece.start == 2 * MiB
    board.advance(piece, 1000, MiB, never)
    have = board.have()
    assert have == [[0, 2 * MiB + 1000]]
    meta = {"mode": "pieces", "have": have}
    assert resume_ranges(meta, 10 * MiB) == [(0, 2 * MiB + 1000)]
    assert missing([(0, 2 * MiB + 1000)], 10 * MiB) == [(2 * MiB + 1000, 10 * MiB)]


def test_old_segment_sidecars_resume_as_ranges() -> None:
    meta = {"mode": "segmented", "segments": [[0, 4, 4], [4, 8, 1], [8, 12, 0]]}
    assert resume_ranges(meta, 12) == [(0, 5)]
    board = PieceBoard(12, [(0, 5)], 2, 2)
    assert board.done_bytes() == 5 and board.contiguous() == 5


def test_untrustworthy_sidecars_are_refused() -> None:
    assert resume_ranges({"mode": "pieces", "have": [[0, 20]]}, 10) is None  # past the end
    assert resume_ranges({"mode": "pieces", "have": [[5, 8], [0, 6]]}, 10) is None
    assert resume_ranges({"mode": "pieces", "have": "x"}, 10) is None
    assert resume_ranges({"mode": "pieces"}, 10) is None
    assert resume_ranges({"mode": "segmented", "segments": [[0, 4, 9]]}, 10) is None
    assert resume_ranges({"mode": "single"}, 10) is None
