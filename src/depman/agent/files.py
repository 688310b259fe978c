"""Crash-safe file writes: temp + fsync + os.replace, and the download sidecar."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Protocol


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Never follow a link planted at a partial's name (it could point outside the ComfyUI
# folder); 0 where the platform has no such flag.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_partial(path: Path, *, fresh: bool) -> int:
    """Open ``<dest>.partial`` read-write without following a symlink.

    ``fresh``: remove whatever entry has the name (a stale partial, a dangling link) and
    create a new file exclusively; otherwise open the existing regular file (ELOOP for a
    link, which the caller treats as a partial to discard).
    """
    flags = os.O_RDWR | NOFOLLOW | CLOEXEC
    if fresh:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    return os.open(path, flags)


def regular_size(path: Path) -> int | None:
    """Size of the regular file at ``path`` (lstat: a link is not followed), else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that ``path`` holds either the old or the new document, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class _SpecLike(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def expected_size(self) -> int | None: ...


def _resume_key(spec: _SpecLike) -> str:
    # A file with several sources resumes whatever any of them wrote (``resume_key``,
    # the sha256); otherwise only what its own URL wrote.
    key = getattr(spec, "resume_key", None)
    return key if isinstance(key, str) and key else source_key(spec.url)


def source_key(url: str) -> str:
    """A fingerprint of the catalog URL (the URL itself may carry a token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


class Sidecar:
    """``<dest>.partial.json``: what the .partial holds, so a restart can resume it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, meta: dict[str, Any], spec: _SpecLike) -> None:
        atomic_write_json(self.path, {**meta, "source": _resume_key(spec),
                                      "from": source_key(spec.url),
                                      "sha256": spec.sha256, "expectedSize": spec.expected_size})

    @staticmethod
    def matches(meta: dict[str, Any], spec: _SpecLike) -> bool:
        return (meta.get("source") == _resume_key(spec)
                and meta.get("sha256") == spec.sha256
                and meta.get("expectedSize") == spec.expected_size)

    @staticmethod
    def from_elsewhere(meta: dict[str, Any], spec: _SpecLike) -> bool:
        """The bytes on disk came from another of the file's sources than ``spec.url``:
        kept (same sha256 to reach), but that source's ETag says nothing here."""
        return meta.get("from", source_key(spec.url)) != source_key(spec.url)
