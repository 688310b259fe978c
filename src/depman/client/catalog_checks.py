"""What `apply` and `workflow import` warn about in the catalog entries they wrote.

- Entries without a sha256: the agent cannot check what it downloads.
- Download hosts outside the agents' default `DM_ALLOWED_DOMAINS`: every download
  fails on agents that keep the default list.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from depman.agent.http import host_allowed
from depman.agent.protocol import DEFAULT_ALLOWED_DOMAINS
from depman.client.api import JsonDoc


def download_urls(dep: JsonDoc) -> list[str]:
    """The URLs agents fetch for a catalog entry (a folder model has one per file)."""
    files = dep.get("files")
    if isinstance(files, list) and files:
        return [str(f.get("url")) for f in files if isinstance(f, dict) and f.get("url")]
    return [str(dep["url"])] if dep.get("url") else []


def hosts_outside_default(deps: Iterable[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """host → ids of the entries downloading from it, for hosts the default list refuses."""
    outside: dict[str, list[str]] = {}
    for dep_id, urls in deps:
        for url in urls:
            host = (urlsplit(url).hostname or "").lower()
            if host and not host_allowed(host, DEFAULT_ALLOWED_DOMAINS):
                ids = outside.setdefault(host, [])
                if dep_id not in ids:
                    ids.append(dep_id)
    return outside


def warn_about(console: Console, unverified: list[str], outside: dict[str, list[str]]) -> None:
    """Print the warnings (nothing when there is nothing to say)."""
    if unverified:
        console.print(
            f"[yellow]warning:[/] {len(unverified)} entr{'y' if len(unverified) == 1 else 'ies'} "
            f"without a sha256 (unverified: the agent cannot check the download): "
            f"{escape(', '.join(unverified))}; add sha256 (and expectedSizeBytes), or use an "
            "hf:// or civitai:// source, which the server resolves with its hash"
        )
    for host, ids in sorted(outside.items()):
        console.print(
            f"[yellow]warning:[/] {escape(host)} is not in the agents' default "
            f"DM_ALLOWED_DOMAINS: downloads of {escape(', '.join(ids))} fail unless the "
            f"agents' DM_ALLOWED_DOMAINS includes {escape(host)}"
        )


def check_hosts(console: Console, deps: Iterable[JsonDoc]) -> None:
    """Warn about download hosts of `deps` that the agents' default allowlist refuses."""
    warn_about(console, [], hosts_outside_default(
        (str(d.get("depId")), download_urls(d)) for d in deps))
