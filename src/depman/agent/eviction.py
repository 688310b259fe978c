"""Dynamic-cache eviction: LRU, never pinned, recently touched, downloading or in-use files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol as p
from .cache import Cache
from .config import AgentConfig
from .errors import InsufficientDiskSpace, UnsafePath
from .folder_models import in_use_under, remove_folder
from .in_use import paths_in_use, real_path
from .progress import format_bytes
from .state import DepRecord

log = logging.getLogger("depman.agent")


def _device(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


def same_filesystem(cache: Cache, record: DepRecord, folder: Path) -> bool:
    """Whether deleting ``record`` frees space on ``folder``'s filesystem."""
    try:
        path = cache.record_path(record)
    except UnsafePath:
        return False
    return _device(path.parent) == _device(folder)


@dataclass(frozen=True)
class EvictionPolicy:
    """``profile.dynamicPolicy`` with the DM_* env overrides applied."""

    enabled: bool = False
    min_free_bytes: int = 0
    max_dynamic_bytes: int | None = None
    batch_max: int = p.DEFAULT_EVICTION_BATCH_MAX
    pin_ttl_seconds: int = p.DEFAULT_PIN_TTL_SECONDS

    @classmethod
    def resolve(cls, profile_policy: Mapping[str, Any] | None,
                config: AgentConfig) -> EvictionPolicy:
        prof = dict(profile_policy or {})

        def pick(env_value: Any, key: str) -> Any:
            return env_value if env_value is not None else prof.get(key)

        enabled = bool(pick(config.dynamic_eviction_enabled, "enabled") or False)
        floor = pick(config.dynamic_min_free_bytes, "minFreeBytes")
        if floor is None:
            floor = p.DEFAULT_MIN_FREE_BYTES_WHEN_ENABLED if enabled else 0
        cap = pick(config.dynamic_max_bytes, "maxDynamicBytes")
        batch = pick(config.eviction_batch_max, "evictionBatchMax")
        ttl = pick(config.pin_ttl_seconds, "pinTtlSeconds")
        return cls(enabled=enabled, min_free_bytes=int(floor),
                   max_dynamic_bytes=int(cap) if cap else None,
                   batch_max=int(batch) if batch else p.DEFAULT_EVICTION_BATCH_MAX,
                   pin_ttl_seconds=int(ttl) if ttl is not None else p.DEFAULT_PIN_TTL_SECONDS)


def _real_path_or_none(path_of: Callable[[DepRecord], Path], record: DepRecord) -> str | None:
    try:
        return real_path(path_of(record))
    except UnsafePath:
        return None  # outside the ComfyUI folder now (a symlink): never deleted


def select_evictions(records: Iterable[DepRecord], *, now: float, free_bytes: int,
                     need_free_bytes: int, dynamic_bytes: int, max_dynamic_bytes: int | None,
                     batch_max: int, pin_ttl_seconds: float, protected: Collection[str],
                     in_use: Collection[str],
                     path_of: Callable[[DepRecord], Path]) -> list[DepRecord]:
    """Least recently used dynamic deps to delete until the floor and the cap hold.

    Never a file adopted on its size alone (``verified`` false): with no sha256 the agent
    cannot tell it from the operator's own file.
    """
    def evictable(r: DepRecord) -> bool:
        if (r.kind != p.DepKind.DYNAMIC.value or not r.verified or r.dep_id in protected
                or now - r.last_used_at < pin_ttl_seconds):
            return False
        real = _real_path_or_none(path_of, r)
        return real is not None and not in_use_under(real, r, in_use)

    candidates = sorted((r for r in records if evictable(r)),
                        key=lambda r: (r.last_used_at, r.dep_id))
    chosen: list[DepRecord] = []
    for record in candidates:
        over_cap = max_dynamic_bytes is not None and dynamic_bytes > max_dynamic_bytes
        if (free_bytes >= need_free_bytes and not over_cap) or len(chosen) >= batch_max:
            break
        chosen.append(record)
        free_bytes += record.size_bytes
        dynamic_bytes -= record.size_bytes
    return chosen


class Evictor:
    """Applies an EvictionPolicy to a Cache."""

    def __init__(self, cache: Cache, policy: EvictionPolicy) -> None:
        self.cache = cache
        self.policy = policy

    def evict(self, *, need_free_bytes: int, protected: Collection[str],
              folder: Path | None = None, enforce_cap: bool = True) -> list[str]:
        """One pass of at most ``batch_max`` deletions; returns the evicted dep ids."""
        if not self.policy.enabled:
            return []
        cache = self.cache
        stats = cache.disk_stats(folder)
        records = cache.records()
        cap = self.policy.max_dynamic_bytes
        if folder is not None and not (enforce_cap and cap and cache.dynamic_bytes() > cap):
            # Room is made on the folder's filesystem: deps in other model roots (another
            # volume) free nothing there.
            records = [r for r in records if same_filesystem(cache, r, folder)]
        chosen = select_evictions(
            records, now=cache.clock(), free_bytes=stats.free_bytes,
            need_free_bytes=need_free_bytes, dynamic_bytes=cache.dynamic_bytes(),
            max_dynamic_bytes=self.policy.max_dynamic_bytes if enforce_cap else None,
            batch_max=self.policy.batch_max, pin_ttl_seconds=self.policy.pin_ttl_seconds,
            protected=protected, in_use=paths_in_use(),
            path_of=cache.record_path)
        evicted = []
        for record in chosen:
            # Forget first: the state never claims a file that may be half gone.
            cache.forget(record.dep_id)
            try:
                # Confined again right before the delete; unlink removes a link, not its target.
                path = cache.record_path(record)
                if record.files is not None:
                    remove_folder(path)  # a folder model goes as one unit
                else:
                    path.unlink(missing_ok=True)
            except UnsafePath as exc:
                log.warning("Not evicting %s: %s", record.dep_id, exc.message)
                continue
            except OSError as exc:
                log.warning("Could not evict %s (%s): %s", record.dep_id, path, exc)
                continue
            log.info("Evicted dynamic dep %s (%s, last used %.0f s ago)", record.dep_id,
                     format_bytes(record.size_bytes), time.time() - record.last_used_at)
            evicted.append(record.dep_id)
        return evicted

    def restore(self, protected: Collection[str]) -> list[str]:
        """Bring the cache back within ``maxDynamicBytes`` and the floor, if it left them.

        An install can only evict what is not pinned or recently used at that moment; the
        excess it leaves goes here once those pins lapse, without waiting for another
        install.
        """
        if not self.policy.enabled:
            return []
        cap = self.policy.max_dynamic_bytes
        over_cap = cap is not None and self.cache.dynamic_bytes() > cap
        floor = self.policy.min_free_bytes
        if not over_cap and self.cache.disk_stats().free_bytes >= floor:
            return []
        return self.evict(need_free_bytes=floor, protected=protected,
                          folder=self.cache.comfyui_dir)

    def ensure_space(self, need_bytes: int, *, folder: Path,
                     protected: Collection[str]) -> list[str]:
        """Make room for ``need_bytes`` plus the floor, or raise InsufficientDiskSpace."""
        floor = self.policy.min_free_bytes
        required = need_bytes + floor
        evicted: list[str] = []
        free = self.cache.disk_stats(folder).free_bytes
        if free < required:
            evicted = self.evict(need_free_bytes=required, protected=protected, folder=folder,
                                 enforce_cap=False)
            free = self.cache.disk_stats(folder).free_bytes
        if free < required:
            hint = ("" if self.policy.enabled else
                    "; dynamic eviction is off (enable it in the profile's dynamicPolicy "
                    "or with DM_DYNAMIC_EVICTION_ENABLED=1)")
            raise InsufficientDiskSpace(
                f"need {format_bytes(need_bytes)} plus a {format_bytes(floor)} floor in "
                f"{folder}, only {format_bytes(free)} free{hint}")
        return evicted
