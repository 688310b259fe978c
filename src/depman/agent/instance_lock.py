"""One agent per state file: an exclusive lock beside it, held for the life of the process.

A restart loop (`depman onstart`) that starts the agent again while the
self-update watchdog also restarts it (a rolled-back build) would otherwise run
two agents on one state file and one ComfyUI folder. The second one waits here
until the first stops, then takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("depman.agent")
_held: int | None = None  # the lock's file descriptor in this process


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


def hold(state_path: Path) -> None:
    """Take the lock of `state_path`, waiting while another agent holds it."""
    global _held
    path = lock_path(state_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by an exec
    except OSError as exc:
        log.warning("Cannot open the agent lock %s (%s); not guarding against a second agent",
                    path, exc)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        log.warning("Another depman agent (pid %s) uses %s; waiting until it stops",
                    other, state_path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        log.info("The other agent stopped; starting")
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held = fd


def forget_in_child() -> None:
    """In a forked child: drop this copy, so the lock goes with the parent (or its exec)."""
    global _held
    if _held is not None:
        with contextlib.suppress(OSError):
            os.close(_held)
        _held = None
