"""A catalog entry's further sources: other URLs for the same bytes, tried after `url`.

A file is named by its sha256 and size, so any URL that serves those bytes is as
good as the entry's own `url`. An entry lists them in order (`sources`); agents
fall back through them when `url` fails (docs/agent.md). `hf://` and
`civitai://` sources are resolved like `url` and must resolve to the entry's
sha256 and size; plain https sources are checked by the agents, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from depman.errors import ValidationFailed

MAX_SOURCES = 16


@dataclass(frozen=True)
class SourceSpec:
    """One further source. `url` is the URL as written until resolved, then the download
    URL; `source` the hf:// or civitai:// URL it was resolved from; `sha256` and
    `size_bytes` what that source serves (known for resolved sources only)."""

    url: str
    source: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None

    @property
    def written(self) -> str:
        """The source as the operator wrote it."""
        return self.source or self.url

    def document(self) -> dict[str, Any]:
        """As stored (`deps.sources`) and shown by the API (`resolvedSources`)."""
        doc: dict[str, Any] = {"url": self.url, "source": self.source, "revision": self.revision}
        if self.sha256:
            doc["sha256"] = self.sha256
        if self.size_bytes is not None:
            doc["sizeBytes"] = self.size_bytes
        return doc


def written(urls: list[str] | tuple[str, ...] | None) -> tuple[SourceSpec, ...]:
    """Sources as an API or fleet document gives them (URL strings, unresolved)."""
    return tuple(SourceSpec(url=u) for u in urls or ())


def stored(docs: list[dict[str, Any]] | None) -> tuple[SourceSpec, ...]:
    """Sources as `deps.sources` holds them."""
    out = []
    for doc in docs or []:
        if isinstance(doc, dict) and isinstance(doc.get("url"), str):
            size = doc.get("sizeBytes")
            out.append(
                SourceSpec(
                    url=doc["url"],
                    source=doc.get("source"),
                    revision=doc.get("revision"),
                    sha256=doc.get("sha256"),
                    size_bytes=size if isinstance(size, int) else None,
                )
            )
    return tuple(out)


def urls_of(docs: list[dict[str, Any]] | None) -> list[str]:
    """The download URLs of stored sources, in order (what agents are handed)."""
    return [s.url for s in stored(docs)]


def reuse(given: tuple[SourceSpec, ...], before: tuple[SourceSpec, ...]) -> tuple[SourceSpec, ...]:
    """`given` with each hf:// / civitai:// source that was resolved before taken as it was
    (same source as written: no API call, same pinned revision)."""
    known = {s.source: s for s in before if s.source}
    return tuple(known.get(s.url, s) if s.source is None else s for s in given)


def check(
    sources: tuple[SourceSpec, ...],
    *,
    url: str,
    sha256: str | None,
    size: int | None,
    folder: bool,
) -> int | None:
    """Refuse sources that cannot stand for the entry's bytes; answer the entry's size
    (a resolved source gives it when the entry did not)."""
    if not sources:
        return size
    if folder:
        raise ValidationFailed("sources: a folder model cannot list sources (only single files)")
    if len(sources) > MAX_SOURCES:
        raise ValidationFailed(f"sources lists more than {MAX_SOURCES} URLs")
    if sha256 is None:
        raise ValidationFailed(
            "sources need the entry's sha256: without it no node can tell that another source "
            "serves the same bytes (give sha256, or an hf:// / civitai:// url that has one)"
        )
    seen = {url}
    for i, s in enumerate(sources):
        try:
            parts = urlsplit(s.url)
            scheme, host = parts.scheme, parts.hostname
        except ValueError:  # "http://[::1" and the like
            scheme, host = "", None
        if scheme not in ("http", "https") or not host:
            raise ValidationFailed(f"sources[{i}] must be an http(s), hf:// or civitai:// URL")
        if s.url in seen:
            raise ValidationFailed(f"sources[{i}] {s.written!r} is listed twice (or is the url)")
        seen.add(s.url)
        if s.sha256 is not None and s.sha256.lower() != sha256:
            raise ValidationFailed(
                f"sources[{i}] {s.written!r} serves other bytes: its sha256 is {s.sha256}, "
                f"the entry's is {sha256}"
            )
        if s.size_bytes is not None:
            if size is not None and s.size_bytes != size:
                raise ValidationFailed(
                    f"sources[{i}] {s.written!r} serves other bytes: {s.size_bytes} bytes, "
                    f"the entry has {size}"
                )
            size = s.size_bytes
    return size
