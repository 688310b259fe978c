"""Folder models: a dep that is a set of files in one folder (a diffusers model).

ComfyUI loads such a model as a whole: a folder holding half of its files is a
broken model that the loaders still list. So the files are downloaded into
``<folder>.partial/`` beside the final folder (each one resumable, as any file
download), each verified (sha256 or size), and only then is the staging folder
renamed to the final name: the model appears at once, complete. A kill -9
mid-download leaves the staging folder; the next start resumes it, skipping the
files ``.depman-verified.json`` already lists. Eviction renames the folder away
before deleting it, so it also disappears as one unit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import receipts
from .cache import safe_relative_path
from .download import DownloadOptions, DownloadSpec, download_file, hash_file
from .errors import DownloadError, DownloadInterrupted
from .files import atomic_write_json
from .state import DepRecord

if TYPE_CHECKING:
    from .cache import Cache
    from .progress import Progress

log = logging.getLogger("depman.agent")

STAGING_SUFFIX = ".partial"
MANIFEST = ".depman-verified.json"


@dataclass(frozen=True)
class FolderFile:
    """One file of a folder model, as the queue item lists it."""

    path: str
    url: str
    sha256: str | None
    size: int | None


def parse_files(raw: Any) -> list[FolderFile]:
    """The item's ``resolved.files``; UnsafePath for a path that leaves the folder."""
    if not isinstance(raw, list) or not raw:
        raise DownloadError("Folder model without files", retryable=False)
    files = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry.get("url") or not entry.get("path"):
            raise DownloadError("Folder model file without path or url", retryable=False)
        path = "/".join(safe_relative_path(str(entry["path"])).parts)
        sha = entry.get("sha256")
        size = entry.get("sizeBytes")
        files.append(FolderFile(
            path=path, url=str(entry["url"]),
            sha256=sha.lower() if isinstance(sha, str) else None,
            size=size if isinstance(size, int) and not isinstance(size, bool) else None))
    return files


def in_use_under(real: str, record: DepRecord, in_use: Collection[str]) -> bool:
    """A file, or any file inside a folder model, that some process has open or mapped."""
    if real in in_use:
        return True
    if record.files is None:
        return False
    prefix = real.rstrip(os.sep) + os.sep
    return any(path.startswith(prefix) for path in in_use)


def remove_folder(path: Path) -> None:
    """Make the folder disappear at once (a rename), then delete it."""
    if not path.exists():
        return
    doomed = path.with_name(f"{path.name}.evicting-{os.getpid()}-{threading.get_ident()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _read_manifest(staging: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((staging / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return {str(e.get("path")): e for e in data if isinstance(e, dict)} if isinstance(
        data, list) else {}


def _verify_existing(folder: Path, files: list[FolderFile]) -> list[dict[str, Any]] | None:
    """Identities of an already complete folder (provisioned by other means), else None."""
    out = []
    for f in files:
        path = folder / f.path
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or (f.size is not None and st.st_size != f.size):
            return None
        if f.sha256 and hash_file(path) != f.sha256:
            return None
        out.append(receipts.folder_file_receipt(path, f.path, st.st_size, f.sha256))
    return out


@dataclass
class FolderInstall:
    """What a folder install needs from the item runner."""

    cache: Cache
    stop: threading.Event
    options: Callable[[Callable[[int], None]], DownloadOptions]
    ensure_space: Callable[[int, Path], None]
    authorization: str | None


def install_folder(job: FolderInstall, *, dep_id: str, kind: str, rel: str, root: str | None,
                   raw_files: Any, progress: Progress) -> DepRecord:
    """Download, verify and reveal a folder model; answers its record (already saved)."""
    cache = job.cache
    files = parse_files(raw_files)
    folder = cache.path_for(rel, root=root)
    if folder.exists():
        found = _verify_existing(folder, files)
        if found is None:
            raise DownloadError(f"{rel} exists but is not this folder model (a file missing, "
                                "or a size or sha256 that differs); remove it to install it",
                                retryable=False)
        log.info("Folder model %s already complete at %s", dep_id, rel)
        return mark_folder_installed(cache, dep_id, kind, rel, root, folder, found)
    staging = folder.with_name(folder.name + STAGING_SUFFIX)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create {staging}: {exc}", retryable=False) from exc
    verified = _read_manifest(staging)
    todo = [f for f in files
            if not receipts.folder_file_matches(staging / f.path, verified.get(f.path, {}))]
    # ComfyUI's DiffusersLoader lists any folder holding a model_index.json, staging
    # folders included: that file comes last, right before the rename.
    todo.sort(key=lambda f: f.path.rsplit("/", 1)[-1] == "model_index.json")
    remaining = sum(f.size or 0 for f in todo)
    if remaining:
        job.ensure_space(remaining, staging)
    for f in todo:
        if job.stop.is_set():
            raise DownloadInterrupted(f"Stopped during {dep_id}")
        dest = staging / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        def file_space(need: int, folder: Path = dest.parent) -> None:
            job.ensure_space(need, folder)

        result = download_file(
            DownloadSpec(url=f.url, dest=dest, sha256=f.sha256, expected_size=f.size,
                         authorization=job.authorization, label=f"{dep_id}/{f.path}"),
            job.options(file_space))
        verified[f.path] = receipts.folder_file_receipt(dest, f.path, result.size, result.sha256)
        atomic_write_json(staging / MANIFEST, list(verified.values()))
    entries = [verified[f.path] for f in files]
    with contextlib.suppress(OSError):
        (staging / MANIFEST).unlink()
    _fsync_dir(staging)
    os.rename(staging, folder)  # the model appears complete, at once
    _fsync_dir(folder.parent)
    log.info("Installed folder model %s (%d files) at %s", dep_id, len(entries), rel)
    return mark_folder_installed(cache, dep_id, kind, rel, root, folder, entries)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def mark_folder_installed(cache: Cache, dep_id: str, kind: str, rel: str, root: str | None,
                          folder: Path, entries: list[dict[str, Any]]) -> DepRecord:
    """Record the folder as one dep (size: the sum), saved before it is reported."""
    now = cache.clock()
    st = os.lstat(folder)
    with cache.lock:
        old = cache.state.deps.get(dep_id)
        record = DepRecord(dep_id, kind, rel, sum(int(e["sizeBytes"]) for e in entries), None,
                           installed_at=old.installed_at if old else now, last_used_at=now,
                           verified=True, root=root, files=entries)
        record.mtime_ns, record.inode = st.st_mtime_ns, st.st_ino
        record.verified_at_ms = receipts.now_ms()
        cache.state.deps[dep_id] = record
        cache.state.failed.pop(dep_id, None)
        cache.state.inflight.pop(dep_id, None)
        cache.save()
        return record
