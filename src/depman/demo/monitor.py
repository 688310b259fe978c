"""Watch the fleet through the admin API: the latest instances, and what changed between polls.

The heartbeat is the truth of what an instance holds, so evictions are seen
here as dynamic deps leaving an instance's inventory, and installs as deps
joining it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from depman.client.api import AdminClient
from depman.client.errors import ClientError

POLL_SECONDS = 0.4
EVENT_HISTORY = 200


@dataclass(frozen=True)
class Event:
    """Something worth a line in the log: an install, an eviction, a download start."""

    at: float
    instance_id: str
    kind: str  # "live", "installed", "evicted", "downloading", "failed"
    dep_id: str = ""

    def describe(self) -> str:
        if self.kind == "live":
            return f"{self.instance_id}: agent live (first heartbeat)"
        return f"{self.instance_id}: {self.kind} {self.dep_id}"


@dataclass
class InstanceView:
    """The parts of an admin instance document the demo shows."""

    instance_id: str
    live: bool
    static: list[str]
    dynamic: list[str]
    downloading: list[str]
    failed: list[str]
    active_downloads: list[dict[str, Any]]
    disk: dict[str, Any]
    dynamic_bytes: int
    queue_depth: int | None
    heartbeat_at: str | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> InstanceView:
        dm = doc.get("dependencyManager") or {}
        heartbeat = dm.get("lastHeartbeatAt")
        live = doc.get("live")
        if live is None:
            live = doc.get("status") == "live" if "status" in doc else heartbeat is not None
        return cls(
            instance_id=str(doc.get("instanceId") or doc.get("id") or "?"),
            live=bool(live),
            static=list(dm.get("installedDepIdsStatic") or []),
            dynamic=list(dm.get("installedDepIdsDynamic") or []),
            downloading=list(dm.get("downloadingDepIds") or []),
            failed=list(dm.get("failedDepIds") or []),
            active_downloads=list(dm.get("activeDownloads") or []),
            disk=dict(dm.get("diskStats") or {}),
            dynamic_bytes=int(dm.get("dynamicBytesUsed") or 0),
            queue_depth=dm.get("queueDepth"),
            heartbeat_at=heartbeat,
        )

    @property
    def installed(self) -> set[str]:
        return set(self.static) | set(self.dynamic)


@dataclass
class FleetTotals:
    """Counters over the whole run."""

    evictions: int = 0
    installs: int = 0
    peak_dynamic_bytes: dict[str, int] = field(default_factory=dict)


class FleetMonitor:
    """Polls `GET /api/admin/instances` in a thread; readers take `snapshot()`."""

    def __init__(self, api: AdminClient, instance_ids: list[str]) -> None:
        self._api = api
        self._instance_ids = instance_ids
        self._lock = threading.Lock()
        # One poll at a time: a poll that fetched earlier must not diff after a later one.
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self._instances: dict[str, InstanceView] = {}
        self.events: deque[Event] = deque(maxlen=EVENT_HISTORY)
        self._new_events: list[Event] = []
        self.totals = FleetTotals()
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def snapshot(self) -> dict[str, InstanceView]:
        with self._lock:
            return dict(self._instances)

    def take_new_events(self) -> list[Event]:
        """Events since the last call (for line-by-line output)."""
        with self._lock:
            out, self._new_events = self._new_events, []
            return out

    def poll_once(self) -> None:
        """One poll: fetch, diff against the previous view, record events.

        Safe to call from another thread than the monitor's (the runner does, to see
        the installs that made a job ready before it logs the job)."""
        with self._poll_lock:
            self._poll()

    def _poll(self) -> None:
        try:
            docs = self._api.list_instances()
        except ClientError as exc:
            self.last_error = str(exc)
            return
        now = time.monotonic()
        with self._lock:
            for doc in docs:
                view = InstanceView.from_doc(doc)
                if self._instance_ids and view.instance_id not in self._instance_ids:
                    continue
                self._diff(self._instances.get(view.instance_id), view, now)
                self._instances[view.instance_id] = view
                peaks = self.totals.peak_dynamic_bytes
                peaks[view.instance_id] = max(peaks.get(view.instance_id, 0), view.dynamic_bytes)

    def _diff(self, old: InstanceView | None, new: InstanceView, now: float) -> None:
        iid = new.instance_id
        if new.heartbeat_at is None:
            return
        if old is None or old.heartbeat_at is None:
            self._event(Event(now, iid, "live"))
            old_installed: set[str] = set()
            old_dynamic: set[str] = set()
            old_downloading: set[str] = set()
            old_failed: set[str] = set()
        else:
            old_installed, old_dynamic = old.installed, set(old.dynamic)
            old_downloading, old_failed = set(old.downloading), set(old.failed)
        for dep in sorted(set(new.downloading) - old_downloading):
            self._event(Event(now, iid, "downloading", dep))
        for dep in sorted(new.installed - old_installed):
            self.totals.installs += 1
            self._event(Event(now, iid, "installed", dep))
        for dep in sorted(old_dynamic - new.installed):
            self.totals.evictions += 1
            self._event(Event(now, iid, "evicted", dep))
        for dep in sorted(set(new.failed) - old_failed):
            self._event(Event(now, iid, "failed", dep))

    def _event(self, event: Event) -> None:
        self.events.append(event)
        self._new_events.append(event)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(POLL_SECONDS)
