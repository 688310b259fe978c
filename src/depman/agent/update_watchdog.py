"""After a self-update: the probation of the new build, and the rollback when it fails.

Before the agent re-executes into a new build it writes a marker beside its
state file (``<state>.update-pending.json``: versions, sha256, the zipapp and
the previous file kept beside it) and forks a watchdog. The new build removes
the marker once it has registered with the control plane. The watchdog, still
running the old code, waits for that. If the new build exits (its process, the
watchdog's parent, goes away) or has not registered within the probation
(``DM_UPDATE_PROBATION_SECONDS``, default 60 s), the watchdog puts the previous
file back, records the build's sha256 as refused (it is never installed again:
those bytes were the build, and the build failed), stops the new build if it
still runs, and starts the previous build in its place.

A build that starts but whose watchdog is gone (the machine rebooted during
probation) arms a new one at start-up: ``arm_at_start``. The marker records the
watchdog's pid with its start time and the boot it ran in, so a pid reused by
another process after a reboot is not mistaken for the watchdog.

A download refused for its bytes (a sha256 mismatch, not a zipapp) is recorded
too, with a time to try again: a captive portal or a broken mirror may serve
the right bytes later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import instance_lock
from . import protocol as p
from .files import atomic_write_json, fsync_dir

log = logging.getLogger("depman.agent")
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
REFUSED_KEEP = 50  # refused builds remembered (oldest forgotten first)


def marker_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".update-pending.json")


def refused_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".update-refused.json")


@dataclass(frozen=True)
class Pending:
    """An update whose new build has not registered yet."""

    from_version: str
    to_version: str
    sha256: str
    pyz: str
    previous: str
    command: list[str]  # the command line this agent was started with, run again as is
    watchdog_pid: int | None = None
    watchdog_identity: str | None = None  # boot id and start time: see `process_identity`

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Pending | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("Update marker %s unreadable (%s); removing it", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None


def load_refused(state_path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(refused_path(state_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(
        data, dict) else {}


def remember_refused(state_path: Path, sha256: str, version: str, reason: str, *,
                     retry_at: float | None = None, received: str | None = None,
                     failures: int = 1) -> None:
    """Refuse this build (kept across restarts and rollbacks): for good, or until
    ``retry_at`` (wall-clock seconds) when its download was refused for its bytes."""
    refused = load_refused(state_path)
    entry: dict[str, Any] = {"version": version, "reason": reason[:300], "at": time.time()}
    if retry_at is not None:
        entry.update(retryAt=retry_at, received=received, failures=failures)
    refused[sha256] = entry
    _write_refused(state_path, refused, sha256)


def forget_refused(state_path: Path, sha256: str) -> None:
    """The build's right bytes arrived after all: it is refused no more."""
    refused = load_refused(state_path)
    if refused.pop(sha256, None) is not None:
        _write_refused(state_path, refused, sha256)


def _write_refused(state_path: Path, refused: dict[str, dict[str, Any]], sha256: str) -> None:
    oldest_first = sorted(refused.items(), key=lambda kv: float(kv[1].get("at", 0)))
    try:
        atomic_write_json(refused_path(state_path), dict(oldest_first[-REFUSED_KEEP:]))
    except OSError as exc:
        log.warning("Could not record refused agent build %s: %s", sha256[:12], exc)


def confirm(state_path: Path) -> None:
    """This build registered: end its probation (the watchdog exits)."""
    path = marker_path(state_path)
    pending = Pending.load(path)
    if pending is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    if pending.to_version == p.AGENT_VERSION:
        log.info("Agent update %s -> %s confirmed: registered with the control plane",
                 pending.from_version, pending.to_version)
        if pending.watchdog_pid:
            _reap_later(pending.watchdog_pid)
    else:
        log.info("Removed the stale update marker of %s -> %s (running %s)",
                 pending.from_version, pending.to_version, p.AGENT_VERSION)


def _reap_later(pid: int) -> None:
    import threading

    def reap() -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)

    threading.Thread(target=reap, name="reap-watchdog", daemon=True).start()


def arm_at_start(state_path: Path, probation: float) -> None:
    """At start-up: a new build still on probation whose watchdog is gone gets a new one."""
    path = marker_path(state_path)
    pending = Pending.load(path)
    if pending is None or pending.to_version != p.AGENT_VERSION:
        return
    if pending.watchdog_pid and _alive(pending.watchdog_pid, pending.watchdog_identity):
        return
    log.warning("Agent update %s -> %s has not registered yet and its watchdog is gone; "
                "watching again for %.0f s", pending.from_version, pending.to_version, probation)
    start_watchdog(state_path, pending, probation)


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a live process (Linux), else None.

    A pid alone is reused, after a reboot most of all; with the boot and the start
    time it names one process.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie is gone already
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat: the start time, in clock ticks


def _alive(pid: int, identity: str | None) -> bool:
    if identity is not None and Path("/proc/self/stat").exists():
        return process_identity(pid) == identity
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_watchdog(state_path: Path, pending: Pending, probation: float) -> int:
    """Fork the watchdog; answers its pid (recorded in the marker) in the parent."""
    agent_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the watchdog
        code = 1
        try:
            instance_lock.forget_in_child()  # the new build takes the lock after the exec
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _watch(state_path, pending, agent_pid, probation)
            code = 0
        except BaseException:  # never return into the agent's code in the child
            log.exception("Update watchdog failed")
        finally:
            os._exit(code)
    identity = process_identity(pid)
    Pending(**{**asdict(pending), "watchdog_pid": pid, "watchdog_identity": identity}).save(
        marker_path(state_path))
    return pid


def _watch(state_path: Path, pending: Pending, agent_pid: int, probation: float) -> None:
    path = marker_path(state_path)
    deadline = time.monotonic() + probation
    why = f"it did not register within {probation:.0f} s"
    while time.monotonic() < deadline:
        current = Pending.load(path)
        if current is None or current.sha256 != pending.sha256:
            return  # confirmed by the new build
        if os.getppid() != agent_pid:
            why = "it exited before registering"
            break
        time.sleep(POLL_SECONDS)
    if Pending.load(path) is None:
        return
    log.error("Agent update %s -> %s failed: %s. Rolling back to %s",
              pending.from_version, pending.to_version, why, pending.from_version)
    roll_back(state_path, pending, why)
    if os.getppid() == agent_pid:
        _stop(agent_pid)
    log.info("Starting the previous agent build again: %s", " ".join(pending.command))
    os.execv(pending.command[0], pending.command)


def roll_back(state_path: Path, pending: Pending, why: str) -> None:
    """Put the previous file back, refuse the new build's sha256, drop the marker."""
    target = Path(pending.pyz)
    os.replace(pending.previous, target)
    fsync_dir(target.parent)
    remember_refused(state_path, pending.sha256, pending.to_version, f"rolled back: {why}")
    with contextlib.suppress(OSError):
        marker_path(state_path).unlink()


def _stop(agent_pid: int) -> None:
    """SIGTERM the hung new build, then SIGKILL it after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(agent_pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while os.getppid() == agent_pid and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if os.getppid() == agent_pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent_pid, signal.SIGKILL)
