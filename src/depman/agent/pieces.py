"""Piece scheduling for segmented downloads: which bytes are on disk, who fetches what next.

The missing bytes of a file are cut into pieces, several per connection, and a
fixed pool of workers takes them in file order. Pieces therefore complete
roughly in file order, so the sha256 of the contiguous prefix keeps pace with
the download. When no piece is left, an idle worker splits the largest piece
still in flight (like aria2c), so a slow connection does not hold up the end.
Byte ranges are ``(start, end)`` pairs, ``end`` exclusive.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Piece size is what is left / (connections * this): big files take few requests
# early, and the last pieces, whose bytes are hashed after the last one lands, are small.
PIECES_PER_CONNECTION = 4
# A steal costs a request and the victim's keep-alive connection; not worth it for less.
MIN_STEAL_BYTES = 1024 * 1024
# sha256 is one sequential stream that competes for the CPU with every connection
# (and, thread by thread, loses). When it falls this far behind the contiguous prefix,
# only the workers of the first LAGGING_WORKERS pieces in flight go on (they extend
# the prefix); the rest wait, so the hash gets a core and ends with the download
# instead of running alone after it on a CPU-bound machine.
MAX_HASH_LAG_BYTES = 32 * 1024 * 1024


def _usable_cpus() -> int:
    # Containers often pin a subset of the host's CPUs; count those.
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 2)


LAGGING_WORKERS = max(1, _usable_cpus() - 1)

@dataclass
class Piece:
    start: int
    end: int  # exclusive; a steal may lower it while the piece is in flight
    done: int = 0
    owned: bool = False
    # The owner may write up to here (its current chunk); a steal cuts above it.
    reserved: int = 0

    @property
    def pos(self) -> int:
        return self.start + self.done

    @property
    def finished(self) -> bool:
        return self.pos >= self.end


def plan_pieces(gaps: Iterable[tuple[int, int]], connections: int,
                min_piece: int) -> list[Piece]:
    """Pieces covering ``gaps`` in file order.

    The first ``connections`` pieces ramp up (1/n, 2/n, ... of the piece size):
    all workers start at once, and equal pieces would finish together, leaving
    the prefix, and the hash, stuck on the first one until the whole wave lands.
    Staggered, they finish one after another in file order and stay that way.
    After the ramp no piece is smaller than ``min_piece``; once they are down to
    it, the rest of a gap is split evenly, so the last one is not a straggler.
    """
    gaps = list(gaps)
    left = sum(end - start for start, end in gaps)
    workers = max(1, connections)
    share = workers * PIECES_PER_CONNECTION
    min_piece = max(1, min_piece)
    ramp_floor = min(min_piece, MIN_STEAL_BYTES)
    pieces: list[Piece] = []
    for start, end in gaps:
        pos = start
        while pos < end:
            size = max(min_piece, left // share)
            if len(pieces) < workers:
                size = max(ramp_floor, size * (len(pieces) + 1) // workers)
                if end - (pos + size) < ramp_floor:
                    size = end - pos
            elif size == min_piece or end - pos < size + min_piece:
                count = max(1, (end - pos) // min_piece)
                bounds = [pos + (end - pos) * i // count for i in range(count + 1)]
                pieces.extend(Piece(bounds[i], bounds[i + 1]) for i in range(count))
                left -= end - pos
                break
            pieces.append(Piece(pos, pos + size))
            pos += size
            left -= size
    return pieces


def missing(have: Iterable[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """The complement of sorted, disjoint ``have`` within [0, total)."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for start, end in have:
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    if pos < total:
        gaps.append((pos, total))
    return gaps


def resume_ranges(meta: Mapping[str, Any], total: int) -> list[tuple[int, int]] | None:
    """The byte ranges a sidecar says are on disk; None when it cannot be trusted.

    Reads the ``pieces`` layout and the ``segments`` one of agents before piece
    scheduling (each segment's first ``done`` bytes are on disk).
    """
    try:
        if meta.get("mode") == "pieces":
            raw = [(int(s), int(e)) for s, e in meta["have"]]
        elif meta.get("mode") == "segmented":
            raw = []
            for s, e, d in meta["segments"]:
                if not 0 <= int(d) <= int(e) - int(s):
                    return None
                raw.append((int(s), int(s) + int(d)))
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    ranges: list[tuple[int, int]] = []
    for start, end in raw:
        if start == end:
            continue
        if start > end or start < 0 or end > total or (ranges and start < ranges[-1][1]):
            return None
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


class PieceBoard:
    """The pieces of one file: handed out in order, split at the tail; thread-safe."""

    def __init__(self, total: int, have: list[tuple[int, int]], connections: int,
                 min_piece: int) -> None:
        self.total = total
        self.connections = max(1, connections)
        self.min_steal = max(MIN_STEAL_BYTES, min_piece // 4)
        self.lock = threading.Lock()
        self.hash_moved = threading.Condition(self.lock)
        self.hashed = 0
        self.waiting = 0
        done = [Piece(s, e, e - s) for s, e in have]
        todo = plan_pieces(missing(have, total), self.connections, min_piece)
        self.pieces = sorted(done + todo, key=lambda p: p.start)
        self.next = 0  # pieces before this index were handed out (or were done)
        self.frontier = 0  # pieces before this index are finished
        self.steals = 0

    def workers(self) -> int:
        """How many connections are worth opening."""
        with self.lock:
            return min(self.connections, sum(1 for p in self.pieces if not p.finished))

    def take(self) -> Piece | None:
        """The next piece in file order, else half of the largest one in flight."""
        with self.lock:
            while self.next < len(self.pieces):
                piece = self.pieces[self.next]
                self.next += 1
                if not piece.finished:
                    piece.owned, piece.reserved = True, piece.pos
                    return piece
            return self._split_largest()

    def _split_largest(self) -> Piece | None:
        victim, spare = None, 0
        for piece in self.pieces[self.frontier:]:
            room = piece.end - max(piece.reserved, piece.pos)
            if piece.owned and room > spare:
                victim, spare = piece, room
        if victim is None or spare < 2 * self.min_steal:
            return None
        cut = victim.end - spare // 2
        stolen = Piece(cut, victim.end, owned=True, reserved=cut)
        victim.end = cut  # the owner sees it at its next chunk and stops there
        self.pieces.insert(self.pieces.index(victim) + 1, stolen)
        self.next = len(self.pieces)
        self.steals += 1
        return stolen

    def advance(self, piece: Piece, written: int, chunk: int,
                stopping: Callable[[], bool]) -> int:
        """Record ``written`` bytes at the piece's position; answer how much to read next.

        0 means the piece is complete (or was cut short by a steal). Waits while
        the hash lags too far behind (see MAX_HASH_LAG_BYTES).
        """
        with self.lock:
            piece.done += written
            if written and piece.finished and self.waiting:
                self.hash_moved.notify_all()  # the frontier may have moved: new leaders
            while (piece.pos < piece.end
                   and self._contiguous() - self.hashed > MAX_HASH_LAG_BYTES
                   and not self._leading(piece) and not stopping()):
                self.waiting += 1
                self.hash_moved.wait(0.05)
                self.waiting -= 1
            want = max(0, min(chunk, piece.end - piece.pos))
            piece.reserved = piece.pos + want
            return want

    def _leading(self, piece: Piece) -> bool:
        """Whether ``piece`` is among the first LAGGING_WORKERS pieces in flight."""
        ahead = 0
        for other in self.pieces[self.frontier:]:
            if other is piece:
                return True
            if other.owned and not other.finished:
                ahead += 1
                if ahead >= LAGGING_WORKERS:
                    return False
        return True

    def span(self, piece: Piece) -> tuple[int, int]:
        """[pos, end) still to fetch for ``piece``."""
        with self.lock:
            return piece.pos, piece.end

    def hashed_to(self, pos: int) -> None:
        """The hash has consumed the file up to ``pos``."""
        with self.lock:
            self.hashed = pos
            # Wake waiters once the lag is gone, not at every block: each wake-up
            # costs them the GIL and this lock, which the hasher needs next.
            if self.waiting and self._contiguous() - pos <= MAX_HASH_LAG_BYTES:
                self.hash_moved.notify_all()

    def contiguous(self) -> int:
        """Bytes from offset 0 that are all on disk."""
        with self.lock:
            return self._contiguous()

    def _contiguous(self) -> int:
        while self.frontier < len(self.pieces) and self.pieces[self.frontier].finished:
            self.frontier += 1
        if self.frontier == len(self.pieces):
            return self.total
        return self.pieces[self.frontier].pos

    def done_bytes(self) -> int:
        with self.lock:
            return sum(p.done for p in self.pieces)

    def have(self) -> list[list[int]]:
        """The byte ranges on disk, merged (the sidecar's ``have``)."""
        ranges: list[list[int]] = []
        with self.lock:
            for piece in self.pieces:
                if not piece.done:
                    continue
                if ranges and ranges[-1][1] == piece.start:
                    ranges[-1][1] = piece.pos
                else:
                    ranges.append([piece.start, piece.pos])
        return ranges
