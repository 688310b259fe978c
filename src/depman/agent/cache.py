"""The node's inventory: installed deps, paths under the ComfyUI folder, disk usage."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import receipts
from .confine import Confinement
from .errors import DownloadError, UnsafePath
from .logonce import problems
from .model_roots import ModelRoots
from .state import AgentState, DepRecord, StateStore

log = logging.getLogger("depman.agent")
JOINED_PATHS_MAX = 100_000


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
        self.dirty = False  # a save failed (disk full): the state lives in memory until one works
        self.confinement = Confinement(comfyui_dir)
        self.roots = ModelRoots()
        # rel -> (path, its folder): parsing paths was most of a heartbeat's re-check.
        self._joined: dict[str, tuple[Path, str]] = {}

    def path_for(self, rel: str, memo: dict[str, bool] | None = None,
                 root: str | None = None) -> Path:
        """The final path of ``rel`` (in model root ``root`` when given); UnsafePath when it
        lies outside the ComfyUI folder (or that root's folder)."""
        if root is not None:
            path, folder = self.roots.locate(safe_relative_path(rel), root)
            return Confinement(folder).check(path, rel, memo)
        joined = self._joined.get(rel)
        if joined is None:
            path = self.comfyui_dir.joinpath(*safe_relative_path(rel).parts)
            joined = (path, str(path.parent))
            if len(self._joined) < JOINED_PATHS_MAX:
                self._joined[rel] = joined
        # Confinement is checked on every call: a folder can become a link at any time.
        return self.confinement.check(joined[0], rel, memo, folder=joined[1])

    def record_path(self, record: DepRecord, memo: dict[str, bool] | None = None) -> Path:
        """The final path of an installed dep (file, or folder of a folder model)."""
        return self.path_for(record.dest_relative_path, memo, record.root)

    def save(self) -> bool:
        """Write the state file (temp + fsync + rename: never half-written).

        A failed write (disk full, read-only) keeps the state in memory; ``flush``
        retries it every cycle and the agent keeps serving meanwhile.
        """
        with self.lock:
            try:
                self.store.save(self.state)
            except OSError as exc:
                self.dirty = True
                problems.warn("state file", "Cannot write the state file %s (%s); keeping the "
                              "state in memory and retrying", self.store.path,
                              exc.strerror or exc)
                return False
            self.dirty = False
            problems.ok("state file")
            return True

    def flush(self) -> None:
        """Retry a state write that failed earlier."""
        if self.dirty:
            self.save()

    def lstat_final(self, record: DepRecord, memo: dict[str, bool] | None = None
                    ) -> os.stat_result | None:
        """The final file's lstat, or None when it is gone or lies outside the folder."""
        try:
            return os.lstat(self.record_path(record, memo))
        except (OSError, UnsafePath):
            return None

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
        """The file is present and still the one its receipt names."""
        if record.files is not None:
            return self.folder_problem(record) is None
        st = self.lstat_final(record)
        return st is not None and receipts.matches(record, st)

    def folder_problem(self, record: DepRecord, memo: dict[str, bool] | None = None
                       ) -> str | None:
        """None while every file of an installed folder model is the one verified; else why."""
        try:
            folder = self.record_path(record, memo)
        except UnsafePath as exc:
            return exc.message
        for entry in record.files or []:
            if not receipts.folder_file_matches(folder / str(entry.get("path")), entry):
                return f"{record.dest_relative_path}/{entry.get('path')} is missing or changed"
        return None

    def kinds(self) -> dict[str, str]:
        with self.lock:
            return {r.dep_id: r.kind for r in self.state.deps.values()}

    # -- changes (each saved at once) ------------------------------------
    def mark_installed(self, dep_id: str, kind: str, rel: str, size: int,
                       sha256: str | None, *, verified: bool = True,
                       root: str | None = None) -> DepRecord:
        """Record a verified final file with its receipt (taken from the file now)."""
        try:
            st = os.lstat(self.path_for(rel, root=root))
        except OSError as exc:
            raise DownloadError(f"{rel} vanished right after it was verified: {exc}") from exc
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise DownloadError(f"{rel} changed right after it was verified")
        now = self.clock()
        with self.lock:
            old = self.state.deps.get(dep_id)
            record = DepRecord(dep_id, kind, rel, size, sha256,
                               installed_at=old.installed_at if old else now,
                               last_used_at=now, verified=verified, root=root)
            receipts.stamp(record, st)
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

    def set_kind(self, dep_id: str, kind: str) -> None:
        with self.lock:
            record = self.state.deps.get(dep_id)
            if record is not None and record.kind != kind:
                record.kind = kind
                self.save()

    def apply_static_ids(self, static_ids: set[str]) -> list[tuple[str, str]]:
        """Follow the profile's static deps now: returns the (depId, new kind) changes."""
        changes = []
        with self.lock:
            for record in self.state.deps.values():
                kind = "static" if record.dep_id in static_ids else "dynamic"
                if record.kind != kind:
                    record.kind = kind
                    changes.append((record.dep_id, kind))
            if changes:
                self.save()
        return changes

    def mark_failed(self, dep_id: str, error: str) -> None:
        with self.lock:
            self.state.failed[dep_id] = error
            self.state.inflight.pop(dep_id, None)
            self.save()

    def clear_failed(self, dep_id: str) -> None:
        """Forget a dep's local failure (the server queued it again)."""
        with self.lock:
            if self.state.failed.pop(dep_id, None) is not None:
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
