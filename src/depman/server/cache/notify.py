"""Telling the other replicas what this one's commits changed: NOTIFY on `depman_wake`.

Each payload is `<origin>/<notice>:<key>`; `origin` is the sending process, which
skips its own (it applied them at its commit already, and an echo landing after a
request refreshed a memo would drop the fresh memo again). The notices are
`Notice`; `x:` also goes out when a replica starts, for whatever its previous run
committed and did not get to announce.

The NOTIFY is sent after the commit, in a transaction of its own on an autocommit
connection with asynchronous commit, by one sender thread that batches whatever
accumulated (`Notifier`), never inside the committing transaction: PostgreSQL
serializes the commits of notifying transactions on one lock held through their
WAL flush, and inside the job transactions that lock queued every job transition
of the fleet behind one slow fsync (100-190 ms waits at 10,000 agents). The price
is a window between commit and NOTIFY: a process that dies in it leaves other
replicas' memos stale until its successor's `x:` or the memo TTL
(`memos.MEMO_SECONDS`).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "depman_wake"
# This process, as the sender of its notifications: drawn again in a forked child, so
# workers forked from one parent never take each other's notices for their own.
ORIGIN = secrets.token_hex(6)


def _new_origin() -> None:
    global ORIGIN
    ORIGIN = secrets.token_hex(6)


os.register_at_fork(after_in_child=_new_origin)


def is_own(origin: str | None) -> bool:
    """Whether a notice's sender is this process."""
    return origin == ORIGIN
MAX_BATCH = 2000  # payloads per NOTIFY statement
_NOTIFY_ALL = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS t(p)")


class Notice(StrEnum):
    """What another replica must do about a commit (the payload's letter)."""

    QUEUED = "i"  # items of the instance may be queued: wake its polls, drop its memos
    INSTANCE = "p"  # the instance's row or holdings changed: drop its memos
    BEAT = "b"  # only its heartbeat memo is stale
    TOKEN = "t"  # its agent token changed or is gone
    JOB = "j"  # the job changed: wake its waiters
    PENDING = "s"  # a job of this server type waits for an instance (no key: of a type unread)
    BUILDS = "u"  # agent builds changed: re-read them, drop every heartbeat memo
    ALL_BEATS = "a"  # the catalog or a profile changed: drop every heartbeat memo
    ALL_INSTANCES = "n"  # unkeyed instance writes: drop every instance memo, wake every poll
    ALL_JOBS = "o"  # unkeyed job writes: wake every job waiter
    EVERYTHING = "x"  # drop every memo


def encode(notice: Notice, key: str = "") -> str:
    """The payload of one notice from this process."""
    return f"{ORIGIN}/{notice.value}:{key}"


def decode(payload: str) -> tuple[str | None, Notice, str] | None:
    """(sending process, notice, key) of a payload; None for one this version does not know."""
    sender, sep, rest = payload.partition("/")
    origin = sender if sep else None
    letter, _, key = (rest if sep else payload).partition(":")
    try:
        return origin, Notice(letter), key
    except ValueError:
        return None


def notify_statement(payloads: list[str]) -> tuple[Any, dict[str, Any]]:
    """The one statement that sends `payloads` on the wake-up channel, and its parameters."""
    return _NOTIFY_ALL, {"channel": NOTIFY_CHANNEL, "payloads": payloads}


class Notifier:
    """Sends payloads from any thread on one background thread, batching what accumulates."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect  # a context manager yielding an autocommit Connection
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0  # payloads queued for the other replicas (/metrics)

    def send(self, payloads: list[str]) -> None:
        """Queue payloads for the other replicas."""
        if not payloads:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="depman-notify", daemon=True
                    )
                    self._thread.start()
        with self._lock:
            self.sent += len(payloads)
        for payload in payloads:
            self._queue.put(payload)

    def close(self) -> None:
        """Send what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[str] = []
            first = self._queue.get()
            if first is None:
                break
            batch.append(first)
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._deliver(batch)

    def _deliver(self, batch: list[str]) -> None:
        statement, params = notify_statement(batch)
        try:
            with self._connect() as conn:
                _execute(conn, statement, params)
        except Exception:
            # The commits stand; the other replicas' memos of these expire.
            log.warning("could not notify the other replicas of %d changes", len(batch))


def _execute(conn: Connection, statement: Any, params: dict[str, Any]) -> None:
    conn.execute(statement, params)
