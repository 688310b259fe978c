"""The node's inventory: installed deps, paths under the ComfyUI folder, disk usage."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import UnsafePath
from .state import AgentState, DepRecord, StateStore

log = logging.getLogger("depman.agent")


@dataclass(frozen=True)
class DiskStats:
    total_bytes: int
    free_bytes: int
    used_bytes: int

    def to_json(self) -> dict[str, int]:
        return {"totalBytes": self.total_bytes, "freeBytes": self.free_bytes,
                "usedBytes": self.used_bytes}


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (the ComfyUI folder may not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def statvfs_stats(path: Path) -> DiskStats:
    """Usage of the filesystem holding ``path`` (not of ``/``: models often sit on a volume)."""
    st = os.statvfs(existing_ancestor(path))
    return DiskStats(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize,
                     used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize)


def safe_relative_path(rel: str) -> PurePosixPath:
    """Refuse absolute paths and any ``..``: files land only inside the ComfyUI folder."""
    if not rel or "\x00" in rel:
        raise UnsafePath(f"Refusing empty or invalid destRelativePath: {rel!r}")
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePath(f"Refusing absolute destRelativePath: {rel}")
    if ".." in pure.parts:
        raise UnsafePath(f"Refusing destRelativePath that escapes the ComfyUI folder: {rel}")
    if not pure.parts or pure.parts[-1] in (".", ""):
        raise UnsafePath(f"Refusing destRelativePath without a file name: {rel}")
    return pure


class Cache:
    """Thread-safe view of ``AgentState``; every change is saved before it is reported."""

    def __init__(self, comfyui_dir: Path, store: StateStore, *,
                 stats: Callable[[Path], DiskStats] = statvfs_stats,
                 clock: Callable[[], float] = time.time) -> None:
        self.comfyui_dir = comfyui_dir
        self.store = store
        self.stats_of = stats
        self.clock = clock
        self.lock = threading.RLock()
        self.state: AgentState = store.load()

    def path_for(self, rel: str) -> Path:
        return self.comfyui_dir.joinpath(*safe_relative_path(rel).parts)

    def save(self) -> None:
        with self.lock:
            self.store.save(self.state)

    def reconcile(self) -> None:
        """Drop records whose file vanished or changed size (state follows the disk)."""
        with self.lock:
            for dep_id, record in list(self.state.deps.items()):
                try:
                    path = self.path_for(record.dest_relative_path)
                    size = path.stat().st_size
                except (OSError, UnsafePath):
                    size = -1
                if size != record.size_bytes:
                    log.info("Dep %s is no longer on disk as recorded (%s); forgetting it",
                             dep_id, record.dest_relative_path)
                    del self.state.deps[dep_id]
            self.save()

    # -- queries ----------------------------------------------------------
    def record(self, dep_id: str) -> DepRecord | None:
        with self.lock:
            return self.state.deps.get(dep_id)

    def records(self) -> list[DepRecord]:
        with self.lock:
            return list(self.state.deps.values())

    def installed_ids(self, kind: str) -> list[str]:
        with self.lock:
            return sorted(r.dep_id for r in self.state.deps.values() if r.kind == kind)

    def dynamic_bytes(self) -> int:
        with self.lock:
            return sum(r.size_bytes for r in self.state.deps.values() if r.kind == "dynamic")

    def failed_ids(self) -> list[str]:
        with self.lock:
            return sorted(self.state.failed)

    def disk_stats(self, path: Path | None = None) -> DiskStats:
        return self.stats_of(path or self.comfyui_dir)

    def file_matches(self, record: DepRecord) -> bool:
        try:
            return self.path_for(record.dest_relative_path).stat().st_size == record.size_bytes
        except (OSError, UnsafePath):
            return False

    # -- changes (each saved at once) ------------------------------------
    def mark_installed(self, dep_id: str, kind: str, rel: str, size: int,
                       sha256: str | None, *, verified: bool = True) -> DepRecord:
        now = self.clock()
        with self.lock:
            old = self.state.deps.get(dep_id)
            record = DepRecord(dep_id, kind, rel, size, sha256,
                               installed_at=old.installed_at if old else now,
                               last_used_at=now, verified=verified)
            self.state.deps[dep_id] = record
            self.state.failed.pop(dep_id, None)
            self.state.inflight.pop(dep_id, None)
            self.save()
            return record

    def touch(self, dep_id: str) -> None:
        with self.lock:
            record = self.state.deps.get(dep_id)
            if record is not None:
                record.last_used_at = self.clock()
                self.save()

    def forget(self, dep_id: str) -> None:
        with self.lock:
            if self.state.deps.pop(dep_id, None) is not None:
                self.save()

    def mark_failed(self, dep_id: str, error: str) -> None:
        with self.lock:
            self.state.failed[dep_id] = error
            self.state.inflight.pop(dep_id, None)
            self.save()

    def set_inflight(self, dep_id: str, item: dict[str, object]) -> None:
        with self.lock:
            self.state.inflight[dep_id] = item
            self.save()

    def clear_inflight(self, dep_id: str) -> None:
        with self.lock:
            if self.state.inflight.pop(dep_id, None) is not None:
                self.save()

    def inflight_items(self) -> list[dict[str, object]]:
        with self.lock:
            return list(self.state.inflight.values())
