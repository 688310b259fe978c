"""Failed authentications: logged (never with what was offered), counted, and slowed down.

Each realm (`admin`, `login`, `register`, `agent`) keeps, per client address and
credential kind, the failures of the last `WINDOW_SECONDS`. A request names the
kinds it accepts (the job API takes the admin or the submit token, so a wrong
token there is a guess at both). A client may fail `free_failures` times at a
kind; after that every further request accepting that kind is answered 429 for
1, 2, 4, … seconds (at most `max_backoff_seconds`), right or wrong credentials
alike, so a guesser gets a handful of tries a minute instead of hundreds a
second. A success clears only the kind it authenticated with: a submit-token
holder's valid job calls never reset its admin-token guesses. The `agent` realm
is logged and counted only: agent tokens are 256-bit random values, and one
address may front many agents.

The records live in this process (with several server processes a guesser gets
that many times the budget); they are bounded to `MAX_CLIENTS` addresses.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from depman.errors import TooManyFailures
from depman.server.logsafe import quoted

log = logging.getLogger("depman.server.auth")
WINDOW_SECONDS = 15 * 60
LOG_EVERY_SECONDS = 60.0
MAX_CLIENTS = 50_000
BACKOFF_REALMS = frozenset({"admin", "login", "register"})


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0
    logged_at: float = 0.0
    unlogged: int = 0


class AuthFailures:
    """Per-(realm, credential kind, client) failure records of one server process."""

    def __init__(self, *, free_failures: int = 5, max_backoff_seconds: float = 300.0) -> None:
        self.free_failures = free_failures
        self.max_backoff_seconds = max_backoff_seconds
        self._records: OrderedDict[tuple[str, str, str], _Record] = OrderedDict()
        self._lock = threading.Lock()
        self._failed_counter: Any = None
        self._throttled_counter: Any = None

    def bind_metrics(self, failed: Any, throttled: Any) -> None:
        """Count into these Prometheus counters (labelled by realm)."""
        self._failed_counter = failed
        self._throttled_counter = throttled

    def check(self, realm: str, client: str, kinds: Sequence[str]) -> None:
        """Raise TooManyFailures while the client backs off at any of these kinds."""
        if realm not in BACKOFF_REALMS:
            return
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for kind in kinds:
                record = self._records.get((realm, kind, client))
                if record is not None:
                    wait = max(wait, record.blocked_until - now)
        if wait > 0:
            if self._throttled_counter is not None:
                self._throttled_counter.labels(realm).inc()
            raise TooManyFailures(max(1, math.ceil(wait)))

    def failed(self, realm: str, client: str, reason: str, kinds: Sequence[str]) -> None:
        """Record (against each kind the request accepted), count and log a failure.

        The log line comes at most once a minute per client, paced by the first kind.
        """
        now = time.monotonic()
        with self._lock:
            record, *_others = [self._failed_kind(realm, kind, client, now) for kind in kinds]
            while len(self._records) > MAX_CLIENTS:
                self._records.popitem(last=False)
            record.unlogged += 1
            due = now - record.logged_at >= LOG_EVERY_SECONDS
            if due:
                record.logged_at = now
                count, record.unlogged = record.unlogged, 0
        if self._failed_counter is not None:
            self._failed_counter.labels(realm).inc()
        if due:
            log.warning(
                "authentication failed: realm=%s client=%s reason=%s failures=%d%s",
                realm,
                quoted(client),
                reason,
                record.failures,
                f" ({count} since the last line)" if count > 1 else "",
            )

    def _failed_kind(self, realm: str, kind: str, client: str, now: float) -> _Record:
        key = (realm, kind, client)
        record = self._records.pop(key, None) or _Record()
        if now - record.last_failure > WINDOW_SECONDS:
            record.failures = 0
        record.failures += 1
        record.last_failure = now
        over = record.failures - self.free_failures
        if realm in BACKOFF_REALMS and over >= 0:
            delay = min(self.max_backoff_seconds, 2.0 ** min(over, 30))
            record.blocked_until = now + delay
        self._records[key] = record
        return record

    def succeeded(self, realm: str, client: str, kind: str) -> None:
        """The client proved it holds `kind`: its failures at that kind (only) are forgiven."""
        if realm not in BACKOFF_REALMS:
            return
        with self._lock:
            self._records.pop((realm, kind, client), None)
