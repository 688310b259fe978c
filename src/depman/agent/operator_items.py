"""What operators ask of an agent through its queue: cancel, retry now, delete a file.

The server marks items (field-agents.md): `cancelReason` (stop and report
`cancelled`), `forceRetry` / `forceRetryAfterMs` (retry despite a local failure),
and `op: "delete"` (remove the dep's file, report `running` then `succeeded` or
`failed`, heartbeat). A cancel of a download already running reaches the agent
through the queue-item check, asked for each running item at every heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import protocol as p
from .cache import Cache
from .errors import AgentError, UnsafePath
from .folder_models import remove_folder

log = logging.getLogger("depman.agent")
CANCELLED_PREFIX = "Dependency queue item cancelled: "
FINAL_STATES = ("succeeded", "failed", "cancelled")


class ItemStop(threading.Event):
    """Set for one item (its cancel) or by the agent's own stop, whichever comes first."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return False
            super().wait(left)
        return True


def cancel_reason(item: dict[str, Any]) -> str | None:
    """The operator's reason when the item is cancelled, else None."""
    reason = item.get("cancelReason")
    if reason:
        return str(reason)
    if item.get("state") == p.ItemState.CANCELLED.value:
        return "cancelled"
    return None


def cancelled_error(reason: str) -> str:
    """The error text of a `cancelled` report, as the field agents word it."""
    return (CANCELLED_PREFIX + reason)[:p.ERROR_MAX_CHARS]


class ForcedRetries:
    """Items the server forces to retry: forget the local failure; wait forceRetryAfterMs."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.not_before: dict[str, float] = {}

    def ready(self, item: dict[str, Any]) -> bool:
        """False while a forced retry's delay runs; clears the dep's local failure."""
        if not item.get("forceRetry"):
            return True
        item_id = str(item.get("itemId"))
        after = item.get("forceRetryAfterMs")
        if isinstance(after, int) and after > 0:
            due = self.not_before.setdefault(item_id, time.monotonic() + after / 1000)
            if time.monotonic() < due:
                return False
        self.not_before.pop(item_id, None)
        self.cache.clear_failed(str(item.get("depId")))
        return True


def delete_file(cache: Cache, item: dict[str, Any]) -> str | None:
    """Remove the dep's file (inside the ComfyUI folder only); None, or the error."""
    dep_id = str(item.get("depId"))
    rel = str((item.get("resolved") or {}).get("destRelativePath") or "")
    record = cache.record(dep_id)
    root = (item.get("resolved") or {}).get("root")
    try:
        # Where the agent put it (a model root), else where the item says.
        path = (cache.record_path(record) if record is not None
                else cache.path_for(rel, root=root if isinstance(root, str) else None))
    except UnsafePath as exc:
        return exc.message
    try:
        if record is not None and record.files is not None:
            remove_folder(path)  # a folder model goes as one unit
        elif path.is_dir() and not path.is_symlink():
            return f"Refusing to delete a folder: {rel}"
        path.unlink(missing_ok=True)  # already gone: the wanted outcome
    except OSError as exc:
        return f"Cannot delete {rel}: {exc.strerror or exc}"
    except AgentError as exc:  # pragma: no cover - path_for raised it above
        return exc.message
    cache.forget(dep_id)
    log.info("Deleted %s (%s) as the operator asked", dep_id, rel)
    return None
