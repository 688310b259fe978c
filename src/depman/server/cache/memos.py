"""What one replica remembers about instances between agent requests, and when it must forget.

10,000 v1 agents send ~2,300 requests a second, nearly all of them saying or
asking nothing new: an empty queue poll, an unchanged heartbeat. A replica
answers those from three memos per instance:

- the answer of an empty poll (the instance has nothing queued);
- a heartbeat memo: the inventory digest stored on the row, the pins answer and
  the failed list, and how long the instance stays live;
- the hash of its agent token.

A memo is set only by a database read or write that no invalidation raced (the
epoch check), so a commit between the read and the memo can never be hidden.
What drops them is derived from what transactions wrote (`invalidation.py`), in
this process and, through NOTIFY, in the others. While the PostgreSQL listener is
down every memo is dropped and none is kept, so requests go to the database.
`DEPMAN_AGENT_MEMOS=off` keeps none at all (the differential test's reference).
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

# Bounds how stale a memo can get if an invalidation were ever missed. Each
# expiry costs one database request per instance, so at 10,000 instances this
# is ~17 extra requests a second per kind.
MEMO_SECONDS = 600.0


@dataclass(frozen=True)
class BeatMemo:
    """What an unchanged heartbeat of a live instance needs: no database read."""

    digest: str
    failed: tuple[str, ...]
    answer: bytes
    live_until: float  # monotonic time at which the instance stops being live
    expires: float  # monotonic time at which the memo itself is dropped
    # hash() of the installed lists exactly as the agent sent them: the same lists
    # again have this digest, without building and hashing the sorted inventory.
    lists_key: int | None = None
    # The disk figures and queue depth the row holds: a beat with others is written.
    figures: tuple[int | None, ...] = ()


class InstanceMemos:
    """Per-instance memos of one server process; safe from any thread."""

    def __init__(self, ttl: float = MEMO_SECONDS, *, enabled: bool = True) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._empty: dict[str, tuple[bytes, float]] = {}
        self._beats: dict[str, BeatMemo] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._epochs: dict[str, int] = {}
        self._generation = 0
        self._own = threading.local()  # per thread: what its own commits dropped (`epoch`)
        self._allowed = enabled  # the setting: off keeps no memo whatever the listener does
        self._enabled = enabled

    @property
    def ttl(self) -> float:
        """Seconds a memo lives at most."""
        return self._ttl

    def epoch(self, instance_id: str) -> tuple[int, int]:
        """Take before reading the database; hand to a `remember_*` afterwards (same thread)."""
        self._own.bumps = {}
        self._own.generation = 0
        return self._generation, self._epochs.get(instance_id, 0)

    def _unchanged_since(self, instance_id: str, seen: tuple[int, int]) -> bool:
        # What this thread's own commits dropped since `seen` was taken does not count:
        # the memo about to be kept was built from those very writes.
        bumps: dict[str, int] = getattr(self._own, "bumps", {})
        own_generation: int = getattr(self._own, "generation", 0)
        return (self._generation, self._epochs.get(instance_id, 0)) == (
            seen[0] + own_generation,
            seen[1] + bumps.get(instance_id, 0),
        )

    def _count_own(self, own: bool, instance_ids: Iterable[str] = (), generation: int = 0) -> None:
        if not own:
            return
        bumps: dict[str, int] | None = getattr(self._own, "bumps", None)
        if bumps is None:
            return  # this thread took no epoch: it keeps no memo
        for instance_id in instance_ids:
            bumps[instance_id] = bumps.get(instance_id, 0) + 1
        self._own.generation += generation

    # -- empty polls ------------------------------------------------------
    def empty_answer(self, instance_id: str) -> bytes | None:
        """The cached answer of an instance known to have nothing queued, if fresh."""
        entry = self._empty.get(instance_id)
        if entry is None or not self._enabled or entry[1] < time.monotonic():
            return None
        return entry[0]

    def remember_empty(self, instance_id: str, answer: bytes, seen: tuple[int, int]) -> None:
        """Cache an empty poll's answer, unless the instance changed since `seen`."""
        with self._lock:
            if self._enabled and self._unchanged_since(instance_id, seen):
                self._empty[instance_id] = (answer, time.monotonic() + self._ttl)

    # -- heartbeats -------------------------------------------------------
    def beat_memo(self, instance_id: str) -> BeatMemo | None:
        """The heartbeat memo of an instance, if fresh."""
        memo = self._beats.get(instance_id)
        if memo is None or not self._enabled or memo.expires < time.monotonic():
            return None
        return memo

    def remember_beat(
        self,
        instance_id: str,
        *,
        digest: str,
        failed: Iterable[str],
        answer: bytes,
        live_seconds: float,
        seen: tuple[int, int],
        lists_key: int | None = None,
        figures: tuple[int | None, ...] = (),
    ) -> None:
        """Keep what a heartbeat just stored, unless the instance changed since `seen`."""
        now = time.monotonic()
        memo = BeatMemo(
            digest, tuple(failed), answer, now + live_seconds, now + self._ttl, lists_key, figures
        )
        with self._lock:
            if self._enabled and self._unchanged_since(instance_id, seen):
                self._beats[instance_id] = memo

    def extend_beat(self, instance_id: str, memo: BeatMemo, live_seconds: float) -> bool:
        """An unchanged heartbeat was taken: the instance stays live (False: memo was dropped)."""
        with self._lock:
            if self._beats.get(instance_id) is not memo:
                return False
            self._beats[instance_id] = dataclasses.replace(
                memo, live_until=time.monotonic() + live_seconds
            )
            return True

    def forget_beats(self, instance_ids: Iterable[str]) -> None:
        """Drop heartbeat memos only (their batched write did not apply)."""
        with self._lock:
            for instance_id in instance_ids:
                self._beats.pop(instance_id, None)

    # -- agent tokens -----------------------------------------------------
    def token_matches(self, instance_id: str, token_hash: str) -> bool:
        """Whether a fresh cached hash for the instance equals `token_hash`."""
        entry = self._tokens.get(instance_id)
        if entry is None or not self._enabled or entry[1] < time.monotonic():
            return False
        return hmac.compare_digest(entry[0], token_hash)

    def remember_token(self, instance_id: str, token_hash: str, seen: tuple[int, int]) -> None:
        """Remember a hash verified against the database, unless the instance changed since."""
        with self._lock:
            if self._enabled and self._unchanged_since(instance_id, seen):
                self._tokens[instance_id] = (token_hash, time.monotonic() + self._ttl)

    def forget_tokens(self, instance_ids: Iterable[str]) -> None:
        """The instances re-registered or were deleted: their old tokens are void."""
        with self._lock:
            for instance_id in instance_ids:
                self._tokens.pop(instance_id, None)

    # -- invalidation -----------------------------------------------------
    def forget(self, instance_ids: Iterable[str], *, own: bool = False) -> None:
        """Items were queued, pins or the inventory changed: the next request asks the database.

        `own`: this thread's commit wrote them (see `epoch`).
        """
        instance_ids = list(instance_ids)
        self._count_own(own, instance_ids)
        with self._lock:
            for instance_id in instance_ids:
                self._epochs[instance_id] = self._epochs.get(instance_id, 0) + 1
                self._empty.pop(instance_id, None)
                self._beats.pop(instance_id, None)

    def forget_all_beats(self, *, own: bool = False) -> None:
        """Drop every heartbeat memo (their answers changed for many instances at once);
        the tokens and empty polls stay. Reads that started before do not leave theirs."""
        self._count_own(own, generation=1)
        with self._lock:
            self._generation += 1
            self._beats.clear()

    def forget_all_instances(self, *, own: bool = False) -> None:
        """Drop every empty poll and heartbeat memo (writes to rows of unknown instances);
        the tokens stay. Reads that started before do not leave theirs."""
        self._count_own(own, generation=1)
        with self._lock:
            self._generation += 1
            self._empty.clear()
            self._beats.clear()

    def set_enabled(self, enabled: bool) -> None:
        """Turn memos on (if the setting allows them) or off; either way every memo is dropped."""
        with self._lock:
            self._enabled = enabled and self._allowed
        self.forget_everything()

    def forget_everything(self, *, own: bool = False) -> None:
        """Drop every memo; reads that started before do not leave theirs."""
        self._count_own(own, generation=1)
        with self._lock:
            self._generation += 1
            self._empty.clear()
            self._beats.clear()
            self._tokens.clear()
