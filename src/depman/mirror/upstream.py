"""Reading a file from its upstreams for the mirror: the URLs to try, each request's slot."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from depman.core.clock import utcnow
from depman.core.upstream import UpstreamGate, release_slot, take_slot
from depman.store.models import Dep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """One URL the bytes may come from, and the Authorization value it needs (if any).

    The header goes to this URL's own origin only; httpx drops it on a redirect to
    another host (Civitai's and Hugging Face's CDNs are presigned).
    """

    url: str
    authorization: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def __repr__(self) -> str:  # never the header: it holds a token
        return f"Upstream({self.url!r})"


def dep_urls(dep: Dep) -> list[str]:
    """Every upstream URL of a catalog entry, in order: `url`, then its `sources`."""
    sources: Sequence[dict[str, Any]] = getattr(dep, "sources", None) or []
    urls = [dep.url, *(str(s["url"]) for s in sources if s.get("url"))]
    return list(dict.fromkeys(urls))


def upstreams_of(deps: Sequence[Dep], tokens: dict[str, str | None]) -> list[Upstream]:
    """The URLs of every entry holding these bytes, each once, in catalog order.

    `tokens`: `auth` value (hf_token, civitai_token) -> the server's token for it;
    it is sent to the entry's own `url` only, as depman's agent does.
    """
    seen: set[str] = set()
    found: list[Upstream] = []
    for dep in deps:
        for index, url in enumerate(dep_urls(dep)):
            if url in seen:
                continue
            seen.add(url)
            token = tokens.get(dep.auth) if index == 0 else None
            found.append(Upstream(url, f"Bearer {token}" if token else None))
    return found


# A slot is renewed this often while its fill streams (a fraction of the lease, so a
# slow hop never lets it lapse; a killed server's slot lapses after one lease).
RENEW_FRACTION = 3


@dataclass
class UpstreamSlots:
    """The fleet-wide download slots a fill takes: the same per-host caps
    (`DEPMAN_UPSTREAM_CONCURRENCY`) the agents' downloads count against."""

    gate: UpstreamGate | None
    holder: str  # e.g. "mirror:<sha256>"

    @contextmanager
    def take(self, host: str) -> Iterator[bool]:
        """Yield whether a slot of `host` was granted; held (renewed) until the block ends."""
        if not take_slot(self.gate, host, self.holder, now=utcnow()):
            yield False
            return
        if self.gate is None or host.rstrip(".").lower() not in self.gate.caps:
            yield True
            return
        done = threading.Event()
        every = max(1.0, self.gate.lease_seconds / RENEW_FRACTION)

        def renew() -> None:
            while not done.wait(every):
                try:
                    take_slot(self.gate, host, self.holder, now=utcnow())
                except Exception:  # a lost renewal only lets the slot lapse early
                    log.warning("mirror: could not renew the %s slot of %s", host, self.holder)

        renewer = threading.Thread(target=renew, name="depman-mirror-slot", daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            done.set()
            renewer.join()
            release_slot(self.gate, self.holder)
