"""The inventory re-check: before each heartbeat, every reported file is stat'ed again.

A file deleted while the agent runs (an operator's ``rm``, a disk cleanup script) used to
stay in every heartbeat until the agent restarted, and the server made jobs ready from
it. Now each heartbeat reports only files whose lstat still matches their receipt (size,
mtime, inode), inside the ComfyUI folder by real path. A file whose receipt no longer
matches but whose size does is re-hashed and kept when its sha256 still matches the one
verified, if it is small enough to hash on the loop thread; a larger one is dropped from
the inventory and proven again (hashed, adopted) when an item for it arrives.

Cost: one lstat per file plus one realpath per distinct folder (bench/inventory_check.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from . import receipts
from .cache import Cache
from .download import hash_file
from .errors import UnsafePath
from .state import DepRecord

log = logging.getLogger("depman.agent")

# Hashing runs on the loop thread before a heartbeat: bounded so a touched 20 GB
# checkpoint cannot hold the heartbeat (and the queue) for minutes. ~0.5 s at SHA-256 speed.
REHASH_MAX_BYTES = 256 * 1024**2


@dataclass
class RecheckResult:
    dropped: dict[str, str] = field(default_factory=dict)  # depId -> why
    restamped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.restamped)


def recheck_inventory(cache: Cache, *, skip: Collection[str] = (),
                      rehash_max_bytes: int = REHASH_MAX_BYTES) -> RecheckResult:
    """Drop every record whose file is gone or changed; returns what changed."""
    result = RecheckResult()
    memo: dict[str, bool] = {}
    with cache.lock:
        for record in list(cache.state.deps.values()):
            if record.dep_id in skip:
                continue  # being downloaded or replaced by a worker right now
            path: Path | None = None
            st: os.stat_result | None = None
            if record.files is not None:  # a folder model: every file checked
                why = cache.folder_problem(record, memo)
                if why is not None:
                    del cache.state.deps[record.dep_id]
                    result.dropped[record.dep_id] = why
                continue
            with contextlib.suppress(OSError, UnsafePath):
                path = cache.record_path(record, memo)
                st = os.lstat(path)
            if st is not None and receipts.matches(record, st):
                continue
            why = _still_valid(record, path, st, rehash_max_bytes)
            if why is None:
                result.restamped.append(record.dep_id)
                continue
            del cache.state.deps[record.dep_id]
            result.dropped[record.dep_id] = why
        if result.changed:
            cache.save()
    for dep_id, why in sorted(result.dropped.items()):
        log.warning("Dep %s is no longer reported as installed: %s", dep_id, why)
    return result


def _still_valid(record: DepRecord, path: Path | None, st: os.stat_result | None,
                 rehash_max_bytes: int) -> str | None:
    """None when the record stays (its receipt re-taken), else the reason to drop it."""
    if path is None or st is None:
        return f"{record.dest_relative_path} is missing (or outside the ComfyUI folder)"
    if not stat.S_ISREG(st.st_mode):
        return f"{record.dest_relative_path} is no longer a regular file"
    if st.st_size != record.size_bytes:
        return (f"{record.dest_relative_path} changed size ({record.size_bytes} -> "
                f"{st.st_size} bytes)")
    if not receipts.has_receipt(record):
        # A record from an agent before receipts: the size is all it knew; take one now.
        receipts.stamp(record, st, verified_at_ms=record.verified_at_ms or receipts.now_ms())
        return None
    if not record.verified or not record.sha256:
        return f"{record.dest_relative_path} changed (mtime or inode) and has no sha256 to check"
    if st.st_size > rehash_max_bytes:
        return (f"{record.dest_relative_path} changed (mtime or inode); it will be hashed "
                "again when an item for it arrives")
    try:
        digest = hash_file(path)
    except OSError as exc:
        return f"{record.dest_relative_path} could not be read again: {exc}"
    if digest != record.sha256:
        return f"{record.dest_relative_path} changed: its sha256 no longer matches"
    receipts.stamp(record, st)
    return None
