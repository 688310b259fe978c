"""One file, many sources: the fleet mirror, the catalog url, then the entry's sources.

Any source that yields the file's sha256 and size is as good as another. The
agent tries them in order and moves on when one fails: a 429 (its Retry-After
waited out first when short), a 5xx, a connection error, a stall, a body that
cannot be the file (a page, another size) or a sha256 mismatch. A source that
served wrong bytes is not asked again for that file while another source is left
(``BadSources``); the others are tried again on the item's next attempt.
docs/agent.md ("Sources and fallback") has the rules.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .download import download_file
from .download_types import DownloadOptions, DownloadResult, DownloadSpec
from .errors import (
    DiskFull,
    DownloadError,
    DownloadInterrupted,
    InsufficientDiskSpace,
    LocalFileError,
)
from .http import check_url, origin_of
from .progress import Progress
from .redact import redact_url

log = logging.getLogger("depman.agent")

MIRROR = "mirror"
UPSTREAM = "upstream"
# Reasons that mean the source served other bytes than the file: never asked again for it.
WRONG_BYTES = frozenset({"not_the_file", "size_mismatch", "sha256_mismatch"})
# This node's problems: no other source would help.
STOPS = (DownloadInterrupted, DiskFull, InsufficientDiskSpace, LocalFileError)
# The mirror answered 4xx (other than 408/429): expired URL, object gone, no access.
MIRROR_4XX = "http_4xx"
# How often one source's short Retry-After is waited out before moving on.
MAX_RETRY_AFTER_WAITS = 3


@dataclass(frozen=True)
class Source:
    """One URL the file can come from; ``kind`` is ``mirror`` or ``upstream``."""

    url: str
    kind: str

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()


def sources_of(resolved: dict[str, Any]) -> list[Source]:
    """The item's sources in the order to try them: ``url`` (the mirror's copy when
    ``mirror`` is true), then ``sources``."""
    first = Source(str(resolved.get("url")), MIRROR if resolved.get("mirror") is True else UPSTREAM)
    out = [first]
    extra = resolved.get("sources")
    for url in extra if isinstance(extra, list) else []:
        if not isinstance(url, str) or url in (s.url for s in out):
            continue
        try:
            check_url(url)
        except DownloadError as exc:  # one unusable source must not fail the item
            log.warning("Ignoring a source of %s: %s", resolved.get("destRelativePath"),
                        exc.message)
            continue
        out.append(Source(url, UPSTREAM))
    return out


@dataclass
class SourcesReport:
    """Which source served the file, bytes per kind, and the sources given up on."""

    served_by: Source | None = None
    bytes_by_kind: dict[str, int] = field(default_factory=lambda: {MIRROR: 0, UPSTREAM: 0})
    bad: list[tuple[str, str]] = field(default_factory=list)  # (host, reason)

    def warning(self) -> str | None:
        """For a file installed after sources were given up on: which, and why (the
        item keeps it as its warning)."""
        if not self.bad or self.served_by is None:
            return None
        given_up = ", ".join(f"{host} ({reason})" for host, reason in self.bad)
        return f"installed from {self.served_by.host} after giving up on {given_up}"

    def fields(self, *, succeeded: bool) -> dict[str, Any]:
        """The optional fields of the status report (docs/api.md)."""
        out: dict[str, Any] = {}
        if succeeded and self.served_by is not None:
            out["servedBy"] = {"kind": self.served_by.kind, "host": self.served_by.host}
        if any(self.bytes_by_kind.values()):
            out["bytesBySource"] = dict(self.bytes_by_kind)
        if self.bad:
            out["badSources"] = [{"host": h, "reason": r} for h, r in self.bad]
        return out


class BadSources:
    """Sources that served wrong bytes, per file (sha256): never asked again for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[str, set[str]] = {}

    def refuse(self, sha256: str, url: str) -> None:
        with self._lock:
            self._refused.setdefault(sha256, set()).add(url)

    def forget(self, sha256: str | None) -> None:
        with self._lock:
            self._refused.pop(sha256 or "", None)

    def refused(self, sha256: str | None, url: str) -> bool:
        if not sha256:
            return False
        with self._lock:
            return url in self._refused.get(sha256, ())


def reason_of(error: DownloadError, received: int, kind: str = UPSTREAM) -> str | None:
    """The badSources reason for giving up on a source (None: not the source's fault).

    An upstream's 401/403/404 is a token or catalog matter; the mirror's (a presigned
    URL past its lifetime, an object gone from the bucket) is the mirror's fault.
    """
    if error.reason is not None:
        return error.reason
    if (kind == MIRROR and error.status is not None and 400 <= error.status < 500
            and error.status not in (408, 429)):
        return MIRROR_4XX
    if error.category == "network":
        return "stalled" if received and "timed out" in error.message.lower() else "connection"
    return None


def download_from_sources(spec: DownloadSpec, sources: list[Source], options: DownloadOptions,
                          bad_sources: BadSources, report: SourcesReport,
                          max_retry_after: float) -> DownloadResult:
    """Fetch the file from the first source that yields it; ``report`` says what happened.

    ``spec.url`` is ignored: each source's URL is used in turn. The authorization
    goes only to the origin of the first upstream URL (the catalog's), never to the
    mirror or another host.
    """
    upstream = next((s for s in sources if s.kind == UPSTREAM), None)
    auth_url = upstream.url if upstream is not None else None
    usable = [s for s in sources if not bad_sources.refused(spec.sha256, s.url)]
    if not usable:
        # Every source served wrong bytes before. The server paces the item's retries
        # (and the operator may have fixed a source): each is asked once more.
        log.warning("Every source of %s served wrong bytes before; asking each once more",
                    spec.label)
        bad_sources.forget(spec.sha256)
        usable = list(sources)
    several = len(usable) > 1
    progress = options.progress or Progress(spec.label or spec.dest.name)
    failures: list[str] = []
    transient = False
    for source in usable:
        same_origin = auth_url is not None and origin_of(source.url) == origin_of(auth_url)
        one = replace(spec, url=source.url, auth_url=auth_url,
                      authorization=spec.authorization if same_origin else None,
                      resume_key=f"sha256:{spec.sha256}" if several and spec.sha256 else None)
        waits = 0
        while True:
            before = progress.received
            try:
                result = download_file(one, replace(options, give_up_early=several,
                                                    progress=progress))
            except DownloadError as exc:
                received = progress.received - before
                report.bytes_by_kind[source.kind] += received
                if isinstance(exc, STOPS):
                    raise  # this node's problem (disk, shutdown): no other source helps
                if (exc.status == 429 and exc.retry_after is not None
                        and exc.retry_after <= max_retry_after and waits < MAX_RETRY_AFTER_WAITS):
                    waits += 1
                    log.warning("%s answered 429; waiting %.0f s as it asks",
                                source.host, exc.retry_after)
                    if options.stop.wait(exc.retry_after):
                        raise DownloadInterrupted() from exc
                    continue
                reason = reason_of(exc, received, source.kind)
                failures.append(f"{source.host}: {exc.message}")
                if reason is not None and (source.host, reason) not in report.bad:
                    report.bad.append((source.host, reason))
                if reason in WRONG_BYTES and spec.sha256:
                    bad_sources.refuse(spec.sha256, source.url)
                    log.error("Source %s served wrong bytes for %s (%s); it is not asked "
                              "for this file again", redact_url(source.url), spec.label, reason)
                elif exc.retryable or reason not in (None, MIRROR_4XX):
                    transient = True
                if not several:
                    raise
                log.warning("Source %s failed for %s: %s; trying the next one",
                            source.host, spec.label, exc.message)
                break
            report.bytes_by_kind[source.kind] += progress.received - before
            report.served_by = source
            return result
    raise DownloadError(f"All {len(usable)} sources failed: " + "; ".join(failures),
                        retryable=transient)
