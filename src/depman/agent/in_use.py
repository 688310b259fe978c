"""Which files some process on the machine is using: open descriptors and memory maps.

ComfyUI loads safetensors with mmap and may close the descriptor afterwards, so
``/proc/*/fd`` alone misses a model a running job depends on; ``/proc/*/maps`` lists
it. Both give the kernel's path of the file. Paths are compared by real path (symlinks
resolved on both sides): ComfyUI may open a model through a linked folder
(``/workspace/ComfyUI`` → a volume) while the agent knows it under the other name.
Processes of other users that we cannot read are skipped (the agent normally runs as
root on an instance).
"""

from __future__ import annotations

import os
from pathlib import Path

_DELETED = " (deleted)"


def _fd_targets(pid_dir: Path) -> list[str]:
    fd_dir = pid_dir / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []  # gone, or another user's process
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink(fd_dir / fd))
        except OSError:
            continue
    return targets


def _mapped_files(pid_dir: Path) -> list[str]:
    """File paths of the process's memory maps (``address perms offset dev inode path``)."""
    try:
        with open(pid_dir / "maps", encoding="utf-8", errors="surrogateescape") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    paths = []
    for line in lines:
        parts = line.rstrip("\n").split(maxsplit=5)
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/"):
            paths.append(parts[5])
    return paths


def paths_in_use(proc: Path = Path("/proc")) -> set[str]:
    """Real paths of every file open or memory-mapped by any process we can inspect."""
    try:
        pids = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return set()
    seen: set[str] = set()
    for pid in pids:
        pid_dir = proc / pid
        seen.update(_fd_targets(pid_dir))
        seen.update(_mapped_files(pid_dir))
    real: set[str] = set()
    for path in seen:
        if not path.startswith("/"):
            continue  # pipe:[…], socket:[…], anon_inode:…
        if path.endswith(_DELETED):
            path = path[:-len(_DELETED)]
        real.add(path)
        real.add(os.path.realpath(path))
    return real


def real_path(path: Path | str) -> str:
    return os.path.realpath(path)
