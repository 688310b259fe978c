"""The demo plays the job runner: wait until a job is ready, start it, "run" it, complete it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from depman.client.api import AdminClient
from depman.client.errors import ClientError

TERMINAL_STATES = frozenset({"completed", "failed"})
WAIT_SECONDS = 5


@dataclass
class JobRecord:
    """What the demo saw of one job."""

    label: str
    dep_ids: tuple[str, ...]
    job_id: str | None = None
    state: str = "unsubmitted"
    instance_id: str | None = None
    error: str | None = None
    missing_at_submit: list[str] | None = None
    submitted_at: float | None = None
    ready_at: float | None = None
    finished_at: float | None = None
    last_doc: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def seconds(self) -> float | None:
        """Submission to completion (or to now, while it runs)."""
        if self.submitted_at is None:
            return None
        return (self.finished_at or time.monotonic()) - self.submitted_at


class JobPlayer:
    """One thread per job: long-poll its state, start it when ready, complete it."""

    def __init__(self, api: AdminClient, server_type: str, run_seconds: float) -> None:
        self._api = api
        self._server_type = server_type
        self._run_seconds = run_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.records: list[JobRecord] = []
        self.lock = threading.Lock()

    def submit(self, label: str, dep_ids: Sequence[str], job_id: str | None = None) -> JobRecord:
        """Submit one job and start the thread that plays it."""
        record = JobRecord(label, tuple(dep_ids))
        answer = self._api.submit_job(self._server_type, list(dep_ids), job_id=job_id)
        with self.lock:
            record.job_id = str(answer["jobId"])
            record.submitted_at = time.monotonic()
            self._update(record, answer)
            missing = answer.get("missingDepIds")
            record.missing_at_submit = list(missing) if isinstance(missing, list) else None
            self.records.append(record)
        thread = threading.Thread(target=self._play, args=(record,), name=f"job-{label}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()
        return record

    def all_done(self) -> bool:
        with self.lock:
            return all(r.done for r in self.records)

    def stop(self) -> None:
        """Ask the threads to stop; they notice within one long-poll."""
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_SECONDS + 2)

    def _play(self, record: JobRecord) -> None:
        assert record.job_id is not None
        while not self._stop.is_set() and not record.done:
            try:
                # seenState: a job that turned ready before this request is answered at once.
                doc = self._api.get_job(
                    record.job_id, wait_seconds=WAIT_SECONDS, seen_state=record.state
                )
                with self.lock:
                    self._update(record, doc)
                if doc.get("state") == "ready":
                    self._run(record)
            except ClientError as exc:
                with self.lock:
                    record.error = str(exc)
                self._stop.wait(0.5)

    def _run(self, record: JobRecord) -> None:
        assert record.job_id is not None
        with self.lock:
            record.ready_at = time.monotonic()
        doc = self._api.start_job(record.job_id)
        with self.lock:
            self._update(record, doc)
        # The "render": long enough to see on screen, short enough for the minute budget.
        self._stop.wait(self._run_seconds)
        doc = self._api.complete_job(record.job_id, ok=True)
        with self.lock:
            self._update(record, doc)

    @staticmethod
    def _update(record: JobRecord, doc: dict[str, Any]) -> None:
        if not doc:
            return
        record.last_doc = doc
        state = doc.get("state")
        if isinstance(state, str):
            record.state = state
        if doc.get("instanceId"):
            record.instance_id = str(doc["instanceId"])
        if doc.get("error"):
            record.error = str(doc["error"])
        if record.done and record.finished_at is None:
            record.finished_at = time.monotonic()
