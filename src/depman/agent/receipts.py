"""Receipts: what a final file was when the agent verified it, and whether it still is.

A receipt is taken right after a file is verified (its sha256 computed from the bytes
written, or, for a file adopted on its size alone, its size checked). It records the
file's size, mtime and inode. Before every heartbeat and every ``touch`` the agent stats
the file again and compares: an operator's ``rm``, a cleanup script or a file rewritten in
place no longer matches, and the agent stops claiming it.

On ``succeeded`` the receipt goes to the server as ``verification``, in the shape later
field agents (0.10.147 on) already send.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from . import protocol as p
from .state import DepRecord

ALGORITHM_SHA256 = "sha256"
ALGORITHM_SIZE = "size"


def now_ms() -> int:
    return int(time.time() * 1000)


def stamp(record: DepRecord, st: os.stat_result, *, verified_at_ms: int | None = None) -> None:
    """Record ``st`` as the identity of ``record``'s verified file."""
    record.size_bytes = st.st_size
    record.mtime_ns = st.st_mtime_ns
    record.inode = st.st_ino
    record.verified_at_ms = now_ms() if verified_at_ms is None else verified_at_ms


def has_receipt(record: DepRecord) -> bool:
    """Records from agents before receipts carry only a size."""
    return record.mtime_ns is not None and record.inode is not None


def matches(record: DepRecord, st: os.stat_result) -> bool:
    """True when ``st`` (an lstat of the final path) is still the file the receipt names."""
    return (stat.S_ISREG(st.st_mode)
            and st.st_size == record.size_bytes
            and st.st_mtime_ns == record.mtime_ns
            and st.st_ino == record.inode)


def folder_file_receipt(path: Path, rel: str, size: int, sha: str | None) -> dict[str, Any]:
    """The receipt of one verified file inside a folder model (an entry of ``record.files``)."""
    st = os.lstat(path)
    return {"path": rel, "sizeBytes": size, "sha256": sha,
            "mtimeNs": str(st.st_mtime_ns), "inode": st.st_ino}


def folder_file_matches(path: Path, entry: dict[str, Any]) -> bool:
    """True when ``path`` is still the file its folder-model receipt ``entry`` names."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_size == entry.get("sizeBytes")
            and str(st.st_mtime_ns) == str(entry.get("mtimeNs"))
            and st.st_ino == entry.get("inode"))


def algorithm(record: DepRecord) -> str:
    return ALGORITHM_SHA256 if record.verified and record.sha256 else ALGORITHM_SIZE


def verification(record: DepRecord) -> dict[str, Any]:
    """The ``verification`` object of a ``succeeded`` status."""
    return {
        "algorithm": algorithm(record),
        "sha256": record.sha256 if algorithm(record) == ALGORITHM_SHA256 else None,
        "sizeBytes": record.size_bytes,
        "mtimeNs": str(record.mtime_ns if record.mtime_ns is not None else 0),
        "verifiedAtMs": record.verified_at_ms if record.verified_at_ms is not None else now_ms(),
        "destRelativePath": record.dest_relative_path,
        "finalPathVerified": True,
        "agentVersion": p.AGENT_VERSION,
    }
