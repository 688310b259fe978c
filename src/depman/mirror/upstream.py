"""Reading a file from its upstreams for the mirror: the URLs to try, each request's slot."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from depman.store.models import Dep


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


@contextmanager
def take_upstream_slot(host: str) -> Iterator[bool]:
    """Take one of the fleet-wide download slots of an upstream host for a fill's request.

    Fills count against the same per-host caps as the agents' downloads. Yields
    whether a slot was granted; today every request is allowed: this is the one place
    the fleet-wide cap (`DEPMAN_UPSTREAM_CONCURRENCY`) takes and releases its slot.
    """
    yield True
