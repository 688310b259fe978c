"""Running one queue item in a worker thread: verify what is there, else download."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol as p
from .adoption import Adopter, Wanted
from .cache import Cache
from .comfyui_check import listing_warning
from .config import AgentConfig
from .download_types import DownloadOptions, DownloadSpec
from .errors import (
    AgentError,
    DownloadError,
    DownloadInterrupted,
    InsufficientDiskSpace,
    MissingToken,
    UnsafePath,
)
from .eviction import Evictor
from .failures import classify
from .fallback import BadSources, SourcesReport, download_from_sources, sources_of
from .folder_models import FolderInstall, install_folder
from .model_roots import ModelRoots
from .progress import Progress, format_bytes
from .redact import redact_url, register_url
from .sidefiles import check_name_length

# With no size from the catalog or the origin, a download stops before the free
# space falls under the policy floor, and never under this (state file, logs).
UNKNOWN_SIZE_RESERVE_BYTES = 64 * 1024 * 1024

log = logging.getLogger("depman.agent")


def item_root(item: dict[str, Any], default_root: str | None, roots: ModelRoots) -> str | None:
    """The item's model root; else the profile's, when that root has a folder for the
    file's type (a shared volume listing only checkpoints leaves the rest in ComfyUI's
    folder); None: the ComfyUI folder."""
    resolved = item.get("resolved") or {}
    root = resolved.get("root")
    if isinstance(root, str) and root:
        return root
    if default_root and roots.has_folder(default_root, str(resolved.get("destRelativePath"))):
        return default_root
    return None


@dataclass(frozen=True)
class Outcome:
    """How an item ended: ``ok``; or failed with ``error``; or ``interrupted`` (resumable)."""

    ok: bool
    error: str | None = None
    interrupted: bool = False
    warning: str | None = None  # ok, but ComfyUI does not list the file
    # servedBy / bytesBySource / badSources of the status report (depman extensions).
    report: dict[str, Any] | None = None


class ItemRunner:
    """Executes download items (and touches whose file has gone) for the loop."""

    def __init__(self, config: AgentConfig, cache: Cache, stop: threading.Event,
                 evictor: Callable[[], Evictor], protected: Callable[[], Collection[str]]) -> None:
        self.config = config
        self.cache = cache
        self.stop = stop
        self.evictor = evictor
        self.protected = protected
        self.adopter = Adopter(cache, stop, config.adopt_stable_seconds)
        # The profile's model root (from register): deps without their own root go there.
        self.default_root: str | None = None
        # Sources that served wrong bytes, per file: shared by the loop's runners.
        self.bad_sources = BadSources()
        self.sources = SourcesReport()

    def run(self, item: dict[str, Any], progress: Progress) -> Outcome:
        """v1 semantics: up to three attempts, waiting item_retry_seconds * 1, then * 2."""
        dep_id = str(item.get("depId"))
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    self.install(item, progress)
                except OSError as exc:  # a file operation outside the download engine
                    raise classify(exc, dep_id) from exc
                warnings = [w for w in (self.sources.warning(), self.comfyui_warning(item)) if w]
                return Outcome(ok=True, warning="; ".join(warnings) or None,
                               report=self.sources.fields(succeeded=True))
            except DownloadInterrupted:
                return Outcome(ok=False, interrupted=True)
            except AgentError as exc:
                retryable = isinstance(exc, DownloadError) and exc.retryable
                text = exc.report() if isinstance(exc, (DownloadError, UnsafePath)) \
                    else exc.message
                if not retryable or attempt >= p.ITEM_ATTEMPTS:
                    log.error("Item %s (%s) failed: %s", item.get("itemId"), dep_id, text)
                    return Outcome(ok=False, error=text,
                                   report=self.sources.fields(succeeded=False))
                delay = self.config.item_retry_seconds * attempt
                log.warning("Item %s attempt %d failed: %s; retrying in %.0f s",
                            item.get("itemId"), attempt, text, delay)
            except Exception as exc:  # a bug must fail the item, not kill the worker
                log.exception("Item %s (%s) crashed", item.get("itemId"), dep_id)
                return Outcome(ok=False, error=f"Internal error: {exc.__class__.__name__}: {exc}")
            if self.stop.wait(delay):
                return Outcome(ok=False, interrupted=True)

    def install(self, item: dict[str, Any], progress: Progress) -> None:
        dep_id = str(item["depId"])
        resolved = item.get("resolved") or {}
        rel = str(resolved.get("destRelativePath") or "")
        kind = str(resolved.get("kind") or p.DepKind.DYNAMIC.value)
        root = self.root_of(item)
        dest = self.cache.path_for(rel, root=root)  # UnsafePath before any network traffic
        check_name_length(dest)
        if resolved.get("files") is not None:
            self.install_folder(item, dep_id, kind, rel, root, progress)
            return
        sha = (resolved.get("sha256") or None)
        sha = sha.lower() if isinstance(sha, str) else None
        expected = resolved.get("expectedSizeBytes")
        expected = int(expected) if isinstance(expected, int) and expected >= 0 else None
        if self.adopter.adopt(Wanted(dep_id, kind, rel, dest, sha, expected, root)):
            return
        url = resolved.get("url")
        if not url:
            raise DownloadError(f"No url to download {dep_id} ({rel})", retryable=False,
                                category="local")
        register_url(str(url))
        # From the mirror `auth` is none (a token would leak to the bucket); the upstream's
        # own scheme rides in `upstreamAuth`, and only the upstream's origin ever gets it.
        auth = resolved.get("upstreamAuth") if resolved.get("mirror") is True else None
        authorization = self.authorization(str(auth or resolved.get("auth") or "none"))
        evictor = self.evictor()

        def ensure_space(need: int) -> None:
            evictor.ensure_space(need, folder=dest.parent,
                                 protected={dep_id, *self.protected()})

        def check_room(chunk: int) -> None:
            floor = max(evictor.policy.min_free_bytes, UNKNOWN_SIZE_RESERVE_BYTES)
            free = self.cache.disk_stats(dest.parent).free_bytes
            if free - chunk < floor:
                raise InsufficientDiskSpace(
                    f"{rel} has no known size and has taken the free space in {dest.parent} "
                    f"down to {format_bytes(free)}; stopped before it falls under the "
                    f"{format_bytes(floor)} floor")

        if expected is not None:  # check before the first byte; again once the origin says
            self.ensure_dir(dest.parent)
            ensure_space(expected)
        sources = sources_of(resolved)
        for source in sources[1:]:
            register_url(source.url)  # never logged with its query string
        more = f" (+{len(sources) - 1} more sources)" if len(sources) > 1 else ""
        log.info("Downloading %s from %s%s to %s", dep_id, redact_url(str(url)), more, rel)
        result = download_from_sources(
            DownloadSpec(url=str(url), dest=dest, sha256=sha, expected_size=expected,
                         authorization=authorization, label=dep_id),
            sources,
            DownloadOptions(allowed_domains=self.config.allowed_domains,
                            connections=self.config.download_connections,
                            min_segment_bytes=self.config.min_segment_bytes,
                            stop=self.stop, progress=progress, ensure_space=ensure_space,
                            check_room=check_room,
                            check_dest=lambda: self.cache.path_for(rel, root=root),
                            stall_bytes_per_second=self.config.stall_bytes_per_second,
                            stall_seconds=self.config.stall_seconds,
                            timeout=min(p.HTTP_TIMEOUT_SECONDS, self.config.stall_seconds)
                            if self.config.stall_seconds > 0 else p.HTTP_TIMEOUT_SECONDS),
            self.bad_sources, self.sources, self.config.max_retry_after_seconds)
        self.cache.mark_installed(dep_id, kind, rel, result.size, result.sha256, root=root)
        log.info("Installed %s (%d bytes%s)", dep_id, result.size,
                 ", segmented" if result.segmented else "")
        evictor.evict(need_free_bytes=evictor.policy.min_free_bytes,
                      protected=set(self.protected()), folder=dest.parent)

    def root_of(self, item: dict[str, Any]) -> str | None:
        return item_root(item, self.default_root, self.cache.roots)

    def install_folder(self, item: dict[str, Any], dep_id: str, kind: str, rel: str,
                       root: str | None, progress: Progress) -> None:
        """A folder model: every file into a staging folder, then one rename."""
        resolved = item.get("resolved") or {}
        for entry in resolved.get("files") or []:
            if isinstance(entry, dict) and entry.get("url"):
                register_url(str(entry["url"]))  # never logged with its query string
        evictor = self.evictor()

        def ensure_space(need: int, folder: Path) -> None:
            self.ensure_dir(folder)
            evictor.ensure_space(need, folder=folder, protected={dep_id, *self.protected()})

        def options(file_space: Callable[[int], None]) -> DownloadOptions:
            return DownloadOptions(allowed_domains=self.config.allowed_domains,
                                   connections=self.config.download_connections,
                                   min_segment_bytes=self.config.min_segment_bytes,
                                   stop=self.stop, progress=progress, ensure_space=file_space,
                                   # the staging folder sits beside the final one
                                   check_dest=lambda: self.cache.path_for(rel, root=root))

        job = FolderInstall(self.cache, self.stop, options, ensure_space,
                            self.authorization(str(resolved.get("auth") or "none")))
        record = install_folder(job, dep_id=dep_id, kind=kind, rel=rel, root=root,
                                raw_files=resolved.get("files"), progress=progress)
        evictor.evict(need_free_bytes=evictor.policy.min_free_bytes,
                      protected=set(self.protected()),
                      folder=self.cache.record_path(record).parent)

    def comfyui_warning(self, item: dict[str, Any]) -> str | None:
        """Ask ComfyUI (DM_COMFYUI_URL) whether it lists the installed file."""
        resolved = item.get("resolved") or {}
        if not self.config.comfyui_url or resolved.get("files") is not None:
            return None  # ComfyUI lists files only, not folder models
        warning = listing_warning(self.config.comfyui_url,
                                  str(resolved.get("destRelativePath") or ""))
        if warning:
            log.warning("%s: %s", item.get("depId"), warning)
        return warning

    def authorization(self, auth: str) -> str | None:
        if auth == p.AuthKind.HF_TOKEN.value:
            if not self.config.hf_token:
                raise MissingToken("HF_TOKEN")
            return f"Bearer {self.config.hf_token}"
        if auth == p.AuthKind.CIVITAI_TOKEN.value:
            if not self.config.civitai_token:
                raise MissingToken("CIVITAI_TOKEN")
            return f"Bearer {self.config.civitai_token}"
        return None

    @staticmethod
    def ensure_dir(path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise classify(exc, f"creating {path}") from exc
