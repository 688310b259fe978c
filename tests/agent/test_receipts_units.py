"""Pure pieces of receipts and the re-check, on real files in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

from depman.agent.cache import Cache
from depman.agent.client import static_dep_ids
from depman.agent.inventory_check import recheck_inventory
from depman.agent.receipts import verification
from depman.agent.state import StateStore


def make_cache(tmp_path: Path) -> Cache:
    comfy = tmp_path / "ComfyUI"
    (comfy / "models/loras").mkdir(parents=True)
    return Cache(comfy, StateStore(tmp_path / "state.json"))


def test_static_dep_ids_absent_or_malformed_is_no_change() -> None:
    assert static_dep_ids({}) is None
    assert static_dep_ids({"staticDepIds": None}) is None
    assert static_dep_ids({"staticDepIds": "a,b"}) is None
    assert static_dep_ids({"staticDepIds": ["a", 3]}) is None
    assert static_dep_ids({"staticDepIds": []}) == set()
    assert static_dep_ids({"staticDepIds": ["a", "b"]}) == {"a", "b"}


def test_size_adopted_receipt_says_size(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    path = cache.path_for("models/loras/x.bin")
    path.write_bytes(b"x" * 10)
    record = cache.mark_installed("x", "dynamic", "models/loras/x.bin", 10, None,
                                  verified=False)
    receipt = verification(record)
    assert receipt["algorithm"] == "size" and receipt["sha256"] is None
    assert receipt["sizeBytes"] == 10 and receipt["mtimeNs"] == str(path.stat().st_mtime_ns)
    assert receipt["finalPathVerified"] is True


def test_records_before_receipts_get_one_at_the_first_check(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    path = cache.path_for("models/loras/old.bin")
    path.write_bytes(b"o" * 5)
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "deps": {"old": {
        "depId": "old", "kind": "dynamic", "destRelativePath": "models/loras/old.bin",
        "sizeBytes": 5, "sha256": None, "installedAt": 1, "lastUsedAt": 1}}}))
    fresh = Cache(cache.comfyui_dir, StateStore(tmp_path / "state.json"))
    result = recheck_inventory(fresh)
    assert result.restamped == ["old"] and not result.dropped
    saved = json.loads((tmp_path / "state.json").read_text())["deps"]["old"]
    assert saved["inode"] == os.stat(path).st_ino
    assert saved["mtimeNs"] == str(os.stat(path).st_mtime_ns)
