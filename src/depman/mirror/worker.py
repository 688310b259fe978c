"""The fill worker: a thread of the server that copies due files into the mirror, one at a time.

Of several server processes sharing a PostgreSQL database, one fills at a time:
it holds a session-level advisory lock on a connection of its own for as long as
it runs, and PostgreSQL releases the lock when that process dies (kill -9
included). The process that takes the lock next first puts back every fill left
`filling` (`core.mirror.reset_interrupted`): only the lock holder fills, so those
were interrupted. On SQLite there is one server process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Connection, text

from depman.core import mirror as ledger
from depman.core.upstream import UpstreamGate
from depman.mirror.fill import FillError, FillStopped, UpstreamBusy
from depman.mirror.service import MirrorService
from depman.mirror.upstream import UpstreamSlots, upstreams_of
from depman.settings import ServerSettings
from depman.store.session import Database

log = logging.getLogger(__name__)
# pg_try_advisory_lock key of the fill worker ("mirror" as an integer).
FILL_LOCK_KEY = 0x6D6972726F72
PROGRESS_WRITE_SECONDS = 1.0


class FillWorker:
    """Runs up to `mirror_fill_concurrency` fills at once until stopped; `wake()` makes it
    look for work now."""

    def __init__(
        self,
        service: MirrorService,
        db: Database,
        settings: ServerSettings,
        *,
        gate: UpstreamGate | None = None,
    ) -> None:
        self.service = service
        # The upstream caps: fills take the same fleet-wide slots as agents' downloads.
        self.gate = gate
        self.db = db
        self.interval = settings.maintenance_interval_seconds
        self.retry_seconds = settings.mirror_retry_seconds
        self.concurrency = settings.mirror_fill_concurrency
        self.tokens: dict[str, str | None] = {
            "hf_token": settings.hf_token.get_secret_value() if settings.hf_token else None,
            "civitai_token": (
                settings.civitai_token.get_secret_value() if settings.civitai_token else None
            ),
        }
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock_conn: Connection | None = None
        self._holder = False
        # One thread at a time takes the lock, and takes the next due object.
        self._guard = threading.Lock()

    def start(self) -> None:
        log.info("mirror: %s", self.service.describe())
        for n in range(self.concurrency):
            thread = threading.Thread(
                target=self._run, name=f"depman-mirror-fill-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: fills in progress are abandoned (their uploads aborted) and left due."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._guard:
            self._drop_lock()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            worked = False
            try:
                with self._guard:
                    held = self._hold_lock()
                worked = held and self._round()
            except Exception:
                log.exception("mirror: fill round failed; trying again")
            if not worked:
                self._wake.wait(self.interval)
                self._wake.clear()

    # The lock ----------------------------------------------------------------

    def _hold_lock(self) -> bool:
        if self.db.dialect != "postgresql":
            if not self._holder:
                self._holder = True
                self._on_taking_over()
            return True
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute(text("SELECT 1"))
                self._lock_conn.commit()
                return True
            except Exception:
                log.warning("mirror: lost the fill lock's connection; taking the lock again")
                self._lock_conn.close()
                self._lock_conn = None
        conn = self.db.engine.connect()
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": FILL_LOCK_KEY})
                   .scalar())
        conn.commit()  # the lock is the session's: no transaction stays open
        if not got:
            conn.close()
            return False
        self._lock_conn = conn
        self._on_taking_over()
        return True

    def _drop_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FILL_LOCK_KEY})
            conn.commit()
        except Exception:
            log.debug("mirror: unlock failed (the connection ends anyway)")
        finally:
            conn.close()

    def _on_taking_over(self) -> None:
        with self.db.session() as session:
            count = ledger.reset_interrupted(session=session)
            session.commit()
        if count:
            log.info("mirror: %d interrupted fills are due again", count)

    # One round -----------------------------------------------------------------

    def _round(self) -> bool:
        """Take one due object and fill it; False when nothing was due."""
        with self.db.session() as session:
            with self._guard:
                if self.service.fills_by_itself:
                    ledger.want_new_entries(session=session)
                row = ledger.take_next(session=session)
                session.commit()  # `filling` before another thread looks
            if row is None:
                return False
            sha, size, dep_id = row.sha256, row.size_bytes, row.dep_id
            upstreams = upstreams_of(
                ledger.upstream_candidates(sha, session=session), self.tokens
            )
            session.commit()
        started = time.monotonic()
        try:
            filled = self.service.store(
                sha, size, upstreams, progress=self._progress(sha), stop=self._stop,
                slots=UpstreamSlots(self.gate, f"mirror:{sha}"),
            )
        except FillStopped:
            self._record(ledger.release_unfinished, sha)
            return False
        except UpstreamBusy:
            self._record(ledger.release_unfinished, sha)
            return False
        except (FillError, ClientError, BotoCoreError) as exc:
            self._failed(sha, dep_id, str(exc) or type(exc).__name__)
            return True
        self._record(ledger.record_stored, sha, filled.size, filled.source_url)
        log.info(
            "mirror: stored %s (sha256 %s…, %d bytes%s) in %.1fs",
            dep_id,
            sha[:12],
            filled.size,
            "" if filled.source_url is None else " from " + _host(filled.source_url),
            time.monotonic() - started,
        )
        return True

    def _failed(self, sha: str, dep_id: str | None, error: str) -> None:
        with self.db.session() as session:
            retry_at = ledger.record_failed(
                sha, error, retry_seconds=self.retry_seconds, session=session
            )
            session.commit()
        log.warning(
            "mirror: fill of %s (sha256 %s…) failed, next try at %s: %s",
            dep_id, sha[:12], retry_at.isoformat(timespec="seconds"), error,
        )

    def _record(self, call: Any, *args: Any) -> None:
        with self.db.session() as session:
            call(*args, session=session)
            session.commit()

    def _progress(self, sha: str) -> Any:
        last = [0.0]

        def progress(done: int) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_WRITE_SECONDS:
                return
            last[0] = now
            try:
                self._record(ledger.record_progress, sha, done)
            except Exception:
                log.debug("mirror: progress not recorded")

        return progress


def _host(url: str) -> str:
    return urlsplit(url).hostname or "?"
