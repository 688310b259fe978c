"""Symlinks inside the ComfyUI folder never make the agent write or delete outside it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from depman.agent.files import source_key
from depman.agent.sidefiles import partial_path, sidecar_path
from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import (
    agent_env,
    dep,
    finish_job,
    instance,
    items,
    run_job,
    setup_fleet,
    wait_dynamic,
)
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

KiB, MiB = 1024, 1024 * 1024


def test_planted_partial_links_are_not_followed(server: Any, tmp_path: Path) -> None:
    small, big, resumed = payload(64 * KiB)[0], payload(3 * MiB)[0], payload(64 * KiB)[0]
    linked = payload(64 * KiB)[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.bin"
    victim.write_bytes(b"keep me" * 1000)
    loras = tmp_path / "ws/ComfyUI/models/loras"
    loras.mkdir(parents=True)
    with ModelOrigin() as origin:
        origin.add("/m/small.bin", small)
        origin.add("/m/big.bin", big)
        origin.add("/m/resumed.bin", resumed)
        origin.add("/m/linked.bin", linked)
        deps = {"small": dep(origin, "/m/small.bin", "models/loras/small.bin", small),
                "big": dep(origin, "/m/big.bin", "models/loras/big.bin", big),
                "resumed": dep(origin, "/m/resumed.bin", "models/loras/resumed.bin", resumed),
                "linked": dep(origin, "/m/linked.bin", "models/loras/linked.bin", linked)}
        # Dangling links where a single-stream and a segmented download put their partials
        # (under today's names and the names of earlier agents),
        for name in ("small", "big"):
            for planted in (partial_path(loras / f"{name}.bin"), loras / f"{name}.bin.partial"):
                planted.symlink_to(outside / f"planted-{name}.bin")
        # and a link to an existing file with a sidecar that invites a resume into it.
        sidecar = json.dumps({
            "mode": "single", "etag": None, "total": len(resumed),
            "source": source_key(deps["resumed"]["url"]),
            "sha256": hashlib.sha256(resumed).hexdigest(), "expectedSize": len(resumed)})
        partial_path(loras / "resumed.bin").symlink_to(victim)
        sidecar_path(loras / "resumed.bin").write_text(sidecar)
        (loras / "resumed.bin.partial").symlink_to(victim)
        (loras / "resumed.bin.partial.json").write_text(sidecar)
        # A link at the destination itself, to an outside file with the right bytes: not
        # adopted through the link; the download replaces the link, not its target.
        (outside / "twin.bin").write_bytes(linked)
        (loras / "linked.bin").symlink_to(outside / "twin.bin")
        setup_fleet(server, deps, static=sorted(deps))
        with AgentProcess(agent_env(server, tmp_path)) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            assert wait_until(lambda: instance(server).get("installedDepIdsStatic")
                              == sorted(deps), 40), (items(server), agent.log())
            assert agent.stop() == 0
        assert origin.requests_for("/m/linked.bin")
    assert (outside / "twin.bin").read_bytes() == linked
    (outside / "twin.bin").unlink()
    for name, data in (("small", small), ("big", big), ("resumed", resumed),
                       ("linked", linked)):
        assert (loras / f"{name}.bin").read_bytes() == data
        assert not (loras / f"{name}.bin").is_symlink()
        assert not (loras / f"{name}.bin.partial").exists()
        assert not os.path.lexists(partial_path(loras / f"{name}.bin"))
    assert sorted(p.name for p in outside.iterdir()) == ["victim.bin"]
    assert victim.read_bytes() == b"keep me" * 1000


def test_linked_folder_leading_out_is_refused(server: Any, tmp_path: Path) -> None:
    data = payload(64 * KiB)[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    models = tmp_path / "ws/ComfyUI/models"
    models.mkdir(parents=True)
    (models / "loras").symlink_to(outside)
    (models / "vae").symlink_to(tmp_path / "nowhere")
    with ModelOrigin() as origin:
        origin.add("/m/x.bin", data)
        unknown_root = {"url": origin.url("/m/x.bin"), "type": "loras", "filename": "y.bin",
                        "root": "no-such-volume", "sha256": hashlib.sha256(data).hexdigest(),
                        "kind": "static"}
        setup_fleet(server, {
            "linked": dep(origin, "/m/x.bin", "models/loras/x.bin", data),
            "dangling": dep(origin, "/m/x.bin", "models/vae/sub/x.bin", data),
            "unknown-root": unknown_root,
        }, static=["linked", "dangling", "unknown-root"])
        with AgentProcess(agent_env(server, tmp_path)) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            assert wait_until(lambda: all(i["state"] == "failed"
                                          for i in items(server).values())
                              and len(items(server)) == 3, 30), items(server)
            found = items(server)
            for dep_id in ("linked", "dangling"):
                assert found[dep_id]["error"].startswith("local error: Refusing destRelativePath")
                assert "outside the ComfyUI folder" in found[dep_id]["error"]
            assert found["unknown-root"]["error"].startswith(
                "local error: Unknown model root 'no-such-volume'")
            # Each refusal is in the agent's own log too, with the same class.
            for dep_id, item in found.items():
                agent.wait_for_line(rf"ERROR Item {item['itemId']} \({dep_id}\) failed: "
                                    r"local error: ")
            assert agent.stop() == 0
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "nowhere").exists()
    assert not list(origin.requests)  # refused before any network traffic


def test_eviction_never_deletes_through_a_link(server: Any, tmp_path: Path) -> None:
    blobs = {name: payload(64 * KiB)[0] for name in ("e1", "e2")}
    outside = tmp_path / "outside"
    folder = tmp_path / "ws/ComfyUI/models/vae"
    with ModelOrigin() as origin:
        deps = {}
        for name, data in blobs.items():
            origin.add(f"/m/{name}.bin", data)
            deps[name] = dep(origin, f"/m/{name}.bin", f"models/vae/{name}.bin", data,
                             kind="dynamic")
        setup_fleet(server, deps, static=[], policy={
            "enabled": True, "minFreeBytes": 0, "maxDynamicBytes": 1,
            "evictionBatchMax": 5, "pinTtlSeconds": 0})
        env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            run_job(server, ["e1"], "j1")
            finish_job(server, "j1")
            wait_dynamic(server, ["e1"])
            # The folder is swapped for a link to an identical copy outside the ComfyUI folder.
            shutil.copytree(folder, outside, copy_function=shutil.copy2)
            shutil.rmtree(folder)
            folder.symlink_to(outside)
            wait_dynamic(server, [])
            agent.wait_for_line(r"Dep e1 is no longer reported as installed: .*outside")
            # A download with the cap at one byte would evict e1 if the agent still held it.
            setup_fleet(server, {"e2": {**deps["e2"],
                                               "destRelativePath": "models/loras/e2.bin"}},
                        static=[], policy={"enabled": True, "minFreeBytes": 0,
                                           "maxDynamicBytes": 1, "evictionBatchMax": 5,
                                           "pinTtlSeconds": 0})
            run_job(server, ["e2"], "j2")
            finish_job(server, "j2")
            wait_dynamic(server, ["e2"])
            assert agent.stop() == 0
    assert (outside / "e1.bin").read_bytes() == blobs["e1"]


def test_evictor_confines_right_before_deleting(tmp_path: Path) -> None:
    """A folder swapped for a link after the last re-check: the delete is refused."""
    from depman.agent.cache import Cache
    from depman.agent.eviction import EvictionPolicy, Evictor
    from depman.agent.state import StateStore

    comfy = tmp_path / "ComfyUI"
    folder = comfy / "models/loras"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 100)
    cache = Cache(comfy, StateStore(tmp_path / "state.json"), clock=lambda: 1e9)
    cache.mark_installed("a", "dynamic", "models/loras/a.bin", 100, "0" * 64)
    outside = tmp_path / "outside"
    shutil.copytree(folder, outside)
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    policy = EvictionPolicy(enabled=True, min_free_bytes=0, max_dynamic_bytes=1,
                            batch_max=5, pin_ttl_seconds=0)
    assert Evictor(cache, policy).evict(need_free_bytes=0, protected=set()) == []
    assert (outside / "a.bin").exists()


def test_folder_relinked_during_a_download(server: Any, tmp_path: Path) -> None:
    """The folder becomes a link out while bytes flow: the agent stops, writes nothing out."""
    data = payload(512 * KiB)[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    loras = tmp_path / "ws/ComfyUI/models/loras"
    loras.mkdir(parents=True)
    with ModelOrigin() as origin:
        # Slow, and the connection drops once halfway: the retry must not follow the link.
        origin.add("/m/slow.bin", data, rate=128 * KiB, drop_after=256 * KiB)
        setup_fleet(server, {"slow": dep(origin, "/m/slow.bin", "models/loras/slow.bin",
                                                data)}, static=["slow"])
        env = agent_env(server, tmp_path, DM_DOWNLOAD_CONNECTIONS="1")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            partial = partial_path(loras / "slow.bin")
            assert wait_until(lambda: partial.exists() and partial.stat().st_size > 0, 30)
            loras.rename(loras.with_name("loras.old"))
            loras.symlink_to(outside)
            assert wait_until(lambda: items(server).get("slow", {}).get("state")
                              == "failed", 30), agent.log()
            assert "outside the ComfyUI folder" in items(server)["slow"]["error"]
            assert agent.stop() == 0
    assert list(outside.iterdir()) == []
