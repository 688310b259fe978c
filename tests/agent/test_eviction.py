"""Eviction order and every pin rule, on a Cache with a scripted disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from depman.agent.cache import Cache, DiskStats, safe_relative_path
from depman.agent.config import AgentConfig
from depman.agent.errors import InsufficientDiskSpace, UnsafePath
from depman.agent.eviction import EvictionPolicy, Evictor
from depman.agent.in_use import paths_in_use
from depman.agent.inventory_check import recheck_inventory
from depman.agent.state import StateStore

GiB = 1024**3
NOW = 1_000_000.0


class FakeDisk:
    """Free space = capacity - bytes of the files that exist under root."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root, self.capacity = root, capacity

    def __call__(self, path: Path) -> DiskStats:
        used = sum(int(f.read_text() or 0) for f in self.root.rglob("*.bin"))
        return DiskStats(self.capacity, self.capacity - used, used)


def make_cache(tmp_path: Path, capacity: int) -> Cache:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    return Cache(comfy, StateStore(tmp_path / "state.json"), stats=FakeDisk(comfy, capacity),
                 clock=lambda: NOW)


def install(cache: Cache, dep_id: str, size: int, last_used_ago: float,
            kind: str = "dynamic") -> Path:
    rel = f"models/{dep_id}.bin"
    path = cache.path_for(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(size))  # FakeDisk reads the size from the content
    cache.mark_installed(dep_id, kind, rel, path.stat().st_size, None)
    cache.state.deps[dep_id].size_bytes = size
    cache.state.deps[dep_id].last_used_at = NOW - last_used_ago
    return path


def policy(**kw: object) -> EvictionPolicy:
    base: dict[str, object] = {"enabled": True, "min_free_bytes": 0, "batch_max": 20,
                               "pin_ttl_seconds": 60}
    base.update(kw)
    return EvictionPolicy(**base)  # type: ignore[arg-type]


def test_lru_first_until_room(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 10 * GiB)
    for dep_id, ago in [("a", 500), ("b", 900), ("c", 700), ("d", 100)]:
        install(cache, dep_id, 2 * GiB, ago)
    evictor = Evictor(cache, policy())
    evicted = evictor.ensure_space(5 * GiB, folder=cache.comfyui_dir, protected=set())
    assert evicted == ["b", "c"]  # 2 GiB free + 4 GiB freed >= 5 GiB
    assert not cache.path_for("models/b.bin").exists()
    assert cache.record("b") is None and cache.record("a") is not None


def test_pin_rules(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 12 * GiB)
    install(cache, "static1", 2 * GiB, 9999, kind="static")
    install(cache, "pinned", 2 * GiB, 9999)
    install(cache, "downloading", 2 * GiB, 9999)
    install(cache, "recent", 2 * GiB, 10)  # inside the pin TTL
    opened = install(cache, "open", 2 * GiB, 9999)
    install(cache, "old", 2 * GiB, 5000)
    evictor = Evictor(cache, policy())
    with opened.open("rb"):  # a process holds it: /proc/*/fd shows it
        assert str(opened) in paths_in_use()
        with pytest.raises(InsufficientDiskSpace, match="Insufficient disk space"):
            evictor.ensure_space(10 * GiB, folder=cache.comfyui_dir,
                                 protected={"pinned", "downloading"})
    assert cache.record("old") is None  # the only legal candidate went
    for kept in ("static1", "pinned", "downloading", "recent", "open"):
        assert cache.record(kept) is not None, kept


def test_batch_max_and_dynamic_cap(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 100 * GiB)
    for i in range(5):
        install(cache, f"d{i}", GiB, 1000 - i)
    evictor = Evictor(cache, policy(max_dynamic_bytes=GiB, batch_max=2))
    assert evictor.evict(need_free_bytes=0, protected=set()) == ["d0", "d1"]
    assert evictor.evict(need_free_bytes=0, protected=set()) == ["d2", "d3"]
    assert evictor.evict(need_free_bytes=0, protected=set()) == []
    assert cache.dynamic_bytes() == GiB


def test_floor_is_kept_after_download(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 10 * GiB)
    install(cache, "a", 4 * GiB, 1000)
    install(cache, "b", 4 * GiB, 500)
    evictor = Evictor(cache, policy(min_free_bytes=5 * GiB))
    assert evictor.evict(need_free_bytes=5 * GiB, protected=set()) == ["a"]


def test_disabled_eviction_gives_clear_error(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 4 * GiB)
    install(cache, "a", 3 * GiB, 1000)
    with pytest.raises(InsufficientDiskSpace, match="eviction is off"):
        Evictor(cache, EvictionPolicy()).ensure_space(2 * GiB, folder=cache.comfyui_dir,
                                                      protected=set())
    assert cache.record("a") is not None


def test_policy_env_overrides_profile() -> None:
    config = AgentConfig.from_env({"FCS_API_BASE_URL": "http://x/api", "SERVER_TYPE": "t",
                                   "DM_DYNAMIC_MAX_BYTES": "1GB"})
    resolved = EvictionPolicy.resolve({"enabled": True, "maxDynamicBytes": 5, "pinTtlSeconds": 7,
                                       "evictionBatchMax": 3}, config)
    assert resolved == EvictionPolicy(True, 5 * GiB, GiB, 3, 7)  # floor defaults to 5 GiB
    assert EvictionPolicy.resolve(None, config).pin_ttl_seconds == 1800


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x.bin", "models/../../x.bin", "",
                                 "C:\\x.bin", "models/.."])
def test_unsafe_paths_refused(rel: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relative_path(rel)


def test_paths_in_use_sees_other_processes(tmp_path: Path) -> None:
    target = tmp_path / "held.bin"
    target.write_bytes(b"x")
    code = f"f = open({str(target)!r}); print('ready', flush=True); import sys; sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert str(target) in paths_in_use()
    finally:
        holder.communicate("")
    assert str(target) not in paths_in_use()


def test_state_reconcile(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, 10 * GiB)
    kept = install(cache, "kept", 1, 0)
    gone = install(cache, "gone", 1, 0)
    gone.unlink()
    cache.state.deps["kept"].size_bytes = kept.stat().st_size
    cache.save()
    fresh = Cache(cache.comfyui_dir, StateStore(tmp_path / "state.json"))
    recheck_inventory(fresh)
    assert fresh.record("gone") is None and fresh.record("kept") is not None
