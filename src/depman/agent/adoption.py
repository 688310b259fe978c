"""Adoption with proof: a file already at a destination counts only when it is proven.

A file found where a dep belongs (left by an earlier agent, copied by an operator, baked
into the image) is adopted when:

- the catalog has a sha256 and the file's bytes hash to it; or
- the catalog has no sha256, the file's size equals ``expectedSizeBytes`` and it has not
  changed for ``DM_ADOPT_STABLE_SECONDS`` (default 10 s: a copy still in progress keeps
  changing). Such a file is recorded as adopted on its size (``verified: false``): it is
  the operator's own file as far as the agent can tell, and eviction never deletes it.

Never a directory (the item fails naming it) and never a symlink or other special file
(the download replaces the link itself, inside the ComfyUI folder). Anything unproven is
downloaded over.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import receipts
from .cache import Cache
from .download import hash_file
from .errors import DownloadError, DownloadInterrupted

log = logging.getLogger("depman.agent")


@dataclass(frozen=True)
class Wanted:
    """What the catalog says belongs at ``dest``."""

    dep_id: str
    kind: str
    rel: str
    dest: Path
    sha256: str | None
    expected_size: int | None
    root: str | None = None  # model root (extra_model_paths.yaml section), None: ComfyUI


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


class Adopter:
    """Decides whether the file at a destination may count as installed."""

    def __init__(self, cache: Cache, stop: threading.Event, stable_seconds: float) -> None:
        self.cache = cache
        self.stop = stop
        self.stable_seconds = stable_seconds

    def adopt(self, want: Wanted) -> bool:
        """True when the dep is installed (already recorded or just adopted)."""
        try:
            st = os.lstat(want.dest)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DownloadError(f"Cannot inspect {want.rel}: {exc}", retryable=False) from exc
        if stat.S_ISDIR(st.st_mode):
            raise DownloadError(f"Destination {want.rel} is a directory; refusing to adopt or "
                                "replace it", retryable=False)
        if not stat.S_ISREG(st.st_mode):
            log.info("%s is not a regular file (a symlink?); downloading over it", want.rel)
            return False
        if want.expected_size is not None and st.st_size != want.expected_size:
            log.info("%s exists with %d bytes, expected %d; downloading again", want.rel,
                     st.st_size, want.expected_size)
            return False
        if self._already_ours(want, st):
            return True
        if want.sha256 is not None:
            return self._adopt_by_hash(want, st)
        if want.expected_size is None:
            log.info("%s exists but the catalog gives neither sha256 nor size to prove it; "
                     "downloading over it", want.rel)
            return False
        return self._adopt_by_size(want, st)

    def _already_ours(self, want: Wanted, st: os.stat_result) -> bool:
        record = self.cache.record(want.dep_id)
        if (record is None or record.dest_relative_path != want.rel
                or record.root != want.root or not receipts.matches(record, st)):
            return False
        if want.sha256 is not None and record.sha256 != want.sha256:
            return False  # the catalog changed the file it wants
        self.cache.set_kind(want.dep_id, want.kind)
        self.cache.touch(want.dep_id)
        return True

    def _adopt_by_hash(self, want: Wanted, st: os.stat_result) -> bool:
        try:
            digest = hash_file(want.dest)
        except OSError as exc:
            raise DownloadError(f"Cannot read {want.rel} to verify it: {exc}",
                                retryable=False) from exc
        if digest != want.sha256:
            log.warning("%s exists but its sha256 differs from the catalog; downloading again",
                        want.rel)
            return False
        self.cache.mark_installed(want.dep_id, want.kind, want.rel, st.st_size, digest,
                                  root=want.root)
        log.info("Adopted %s already at %s (sha256 matches)", want.dep_id, want.rel)
        return True

    def _adopt_by_size(self, want: Wanted, st: os.stat_result) -> bool:
        age = time.time() - st.st_mtime
        if age < self.stable_seconds:
            # Maybe a copy in progress: wait until it has been still for the whole period.
            if self.stop.wait(min(self.stable_seconds, self.stable_seconds - age)):
                raise DownloadInterrupted()
            try:
                again = os.lstat(want.dest)
            except OSError:
                return False
            if not _same_file(st, again):
                log.info("%s changed while waiting to adopt it; downloading over it", want.rel)
                return False
        self.cache.mark_installed(want.dep_id, want.kind, want.rel, st.st_size, None,
                                  verified=False, root=want.root)
        log.info("Adopted %s already at %s on its size (no sha256 in the catalog; it will "
                 "never be evicted)", want.dep_id, want.rel)
        return True
