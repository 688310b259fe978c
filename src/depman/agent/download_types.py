"""What a download is asked to do and answers: the engine's inputs and result.

Apart from the engine (``download.py``) so the piece fetcher (``segments.py``)
can name them without importing the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol as p
from .progress import Progress
from .retry import RetryPolicy


@dataclass(frozen=True)
class DownloadSpec:
    """What to fetch and where; ``authorization`` is a full header value ("Bearer …")."""

    url: str
    dest: Path
    sha256: str | None = None
    expected_size: int | None = None
    authorization: str | None = None
    label: str = ""
    # The scheme/host/port the authorization may go to (default: ``url``'s own).
    auth_url: str | None = None
    # Set for a file with several sources (to its sha256): a partial any of them
    # wrote is resumed by the next one (the sidecar is keyed on it, not on ``url``).
    resume_key: str | None = None


@dataclass
class DownloadOptions:
    """How to fetch. ``allowed_domains=None`` disables the allowlist (tests, benchmarks)."""

    allowed_domains: Sequence[str] | None = None
    connections: int = p.DEFAULT_DOWNLOAD_CONNECTIONS
    min_segment_bytes: int = p.DEFAULT_MIN_SEGMENT_BYTES
    chunk_bytes: int = p.CHUNK_BYTES
    timeout: float = p.HTTP_TIMEOUT_SECONDS
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress | None = None
    # Called with the bytes still to be written once the size is known; raises
    # InsufficientDiskSpace when room cannot be made.
    ensure_space: Callable[[int], None] | None = None
    # Called before each chunk of a body whose size nobody knows; raises
    # InsufficientDiskSpace before the write would take the disk under its floor.
    check_room: Callable[[int], None] | None = None
    # Called before every attempt and right before the rename into place; raises
    # (UnsafePath) when the destination's folder no longer lies where it may (re-linked
    # while the download ran).
    check_dest: Callable[[], object] | None = None
    # A stall: fewer than ``stall_bytes_per_second`` on average over ``stall_seconds``
    # (0 turns the check off). With another source to go to, the download gives up on
    # this one instead of waiting (``give_up_early``).
    stall_bytes_per_second: int = p.DEFAULT_STALL_BYTES_PER_SECOND
    stall_seconds: float = p.DEFAULT_STALL_SECONDS
    # Set when the file has other sources: a failure that made no new progress ends
    # the download at once (the caller moves to the next source) instead of retrying.
    give_up_early: bool = False

    def new_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, base_delay=self.base_delay,
                           max_delay=self.max_delay)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    segmented: bool
    resumed_from: int
