"""Receipts, the per-heartbeat inventory re-check, touch semantics and static→dynamic.

A real agent process talks to a real depman server through a recording proxy (so the
test can read what the agent sent, and add ``staticDepIds`` to answers).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depman.agent import protocol as p
from tests.agent.conftest import payload
from tests.agent.recorder import Recorder
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import (
    agent_env,
    dep,
    finish_job,
    instance,
    put,
    run_job,
    setup_fleet,
    wait_dynamic,
)
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

MiB = 1024 * 1024


@pytest.fixture
def recorder(server: Any) -> Iterator[Recorder]:
    with Recorder(server.root_url) as running:
        yield running


def state_deps(tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "ws" / p.STATE_FILENAME
    try:
        return dict(json.loads(path.read_text())["deps"])
    except (OSError, ValueError):
        return {}


def succeeded(recorder: Recorder, dep_id: str) -> list[dict[str, Any]]:
    return [b for b in recorder.bodies("/dependencies/status")
            if b.get("depId") == dep_id and b.get("state") == "succeeded"]


def static_held(server: Any) -> list[str]:
    return list(instance(server).get("installedDepIdsStatic") or [])


def test_receipt_sent_on_succeeded_and_kept(server: Any, recorder: Recorder,
                                            tmp_path: Path) -> None:
    data, sha = payload(MiB + 3)
    with ModelOrigin() as origin:
        origin.add("/m/a.bin", data)
        setup_fleet(server, {"a": dep(origin, "/m/a.bin", "models/vae/a.bin", data)},
                    static=["a"])
        env = agent_env(server, tmp_path, FCS_API_BASE_URL=recorder.url)
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            assert wait_until(lambda: succeeded(recorder, "a"), 30), agent.log()
            assert wait_until(lambda: static_held(server) == ["a"], 20)
            shown = instance(server).get("receipts") or []
            assert agent.stop() == 0
    st = os.stat(tmp_path / "ws/ComfyUI/models/vae/a.bin")
    # The server keeps and shows what the agent proved.
    assert [(r["depId"], r["algorithm"], r["sha256"], r["sizeBytes"], r["mtimeNs"])
            for r in shown] == [("a", "sha256", sha, len(data), str(st.st_mtime_ns))]
    receipt = succeeded(recorder, "a")[0]["verification"]
    assert receipt == {
        "algorithm": "sha256", "sha256": sha, "sizeBytes": len(data),
        "mtimeNs": str(st.st_mtime_ns), "verifiedAtMs": receipt["verifiedAtMs"],
        "destRelativePath": "models/vae/a.bin", "finalPathVerified": True,
        "agentVersion": p.AGENT_VERSION,
    }
    assert isinstance(receipt["verifiedAtMs"], int) and receipt["verifiedAtMs"] > 0
    kept = state_deps(tmp_path)["a"]
    assert (kept["inode"], kept["mtimeNs"], kept["sizeBytes"], kept["sha256"]) == (
        st.st_ino, str(st.st_mtime_ns), len(data), sha)


def test_held_files_rechecked_every_heartbeat(server: Any, recorder: Recorder,
                                              tmp_path: Path) -> None:
    blobs = {name: payload(64 * 1024)[0] for name in ("gone", "rewritten", "touched", "kept")}
    with ModelOrigin() as origin:
        deps = {}
        for name, data in blobs.items():
            origin.add(f"/m/{name}.bin", data)
            deps[name] = dep(origin, f"/m/{name}.bin", f"models/loras/{name}.bin", data,
                             kind="dynamic")
        # Dynamic deps held after a job: nothing queues them again behind the test's back.
        setup_fleet(server, deps, static=[], policy={"enabled": False})
        env = agent_env(server, tmp_path, FCS_API_BASE_URL=recorder.url,
                        DM_HEARTBEAT_SECONDS="1")
        loras = tmp_path / "ws/ComfyUI/models/loras"
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            run_job(server, sorted(blobs), "j1")
            finish_job(server, "j1")
            wait_dynamic(server, sorted(blobs))
            before = len(recorder.bodies("/dependencies/heartbeat"))
            # An operator's rm, a rewrite in place with other bytes of the same size, and
            # a `touch` that changes only the mtime (same bytes: re-hashed and kept).
            (loras / "gone.bin").unlink()
            (loras / "rewritten.bin").write_bytes(payload(64 * 1024)[0])
            os.utime(loras / "touched.bin", ns=(1_000_000_000, 1_000_000_000))
            expected = ["kept", "touched"]
            wait_dynamic(server, expected, timeout=20)
            beats = recorder.bodies("/dependencies/heartbeat")[before:]
            # Within one heartbeat: only one already being built may still list them.
            stale = [b for b in beats if b["installedDynamicDepIds"] != expected]
            assert len(stale) <= 1, beats
            assert all(b["installedDynamicDepIds"] == expected for b in beats[len(stale):])
            agent.wait_for_line(r"Dep gone is no longer reported as installed: .*missing")
            agent.wait_for_line(r"Dep rewritten is no longer reported as installed")
            assert agent.stop() == 0
    kept = state_deps(tmp_path)
    assert sorted(kept) == expected
    assert kept["touched"]["mtimeNs"] == str(1_000_000_000)  # receipt re-taken after re-hash


def test_touch_proves_the_file_or_fetches_it(server: Any, recorder: Recorder,
                                             tmp_path: Path) -> None:
    data, sha = payload(MiB)
    with ModelOrigin() as origin:
        origin.add("/m/d1.bin", data)
        setup_fleet(server, {"d1": dep(origin, "/m/d1.bin", "models/loras/d1.bin",
                                              data, kind="dynamic")},
                    static=[], policy={"enabled": False})
        env = agent_env(server, tmp_path, FCS_API_BASE_URL=recorder.url)
        target = tmp_path / "ws/ComfyUI/models/loras/d1.bin"
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            run_job(server, ["d1"], "j1")
            finish_job(server, "j1")
            wait_dynamic(server, ["d1"])
            fetched = len(origin.requests_for("/m/d1.bin"))
            # A touch of an intact file: succeeded with its receipt, nothing fetched.
            run_job(server, ["d1"], "j2")
            assert wait_until(lambda: len(succeeded(recorder, "d1")) >= 2, 30), agent.log()
            finish_job(server, "j2")
            assert len(origin.requests_for("/m/d1.bin")) == fetched
            touch = succeeded(recorder, "d1")[1]
            assert touch["op"] == "touch" and touch["verification"]["sha256"] == sha
            # Same size, other bytes, under the agent's feet: the touch must not pass.
            target.write_bytes(payload(MiB)[0])
            run_job(server, ["d1"], "j3")
            assert wait_until(lambda: len(succeeded(recorder, "d1")) >= 3, 30), agent.log()
            assert target.read_bytes() == data
            assert len(origin.requests_for("/m/d1.bin")) > fetched
            refetch = succeeded(recorder, "d1")[2]
            assert refetch["op"] == "touch" and refetch["verification"]["sha256"] == sha
            assert refetch["verification"]["mtimeNs"] == str(target.stat().st_mtime_ns)
            finish_job(server, "j3")
            assert agent.stop() == 0


def test_static_ids_from_answers_demote_held_deps(server: Any, recorder: Recorder,
                                                  tmp_path: Path) -> None:
    blobs = {name: payload(MiB)[0] for name in ("s1", "s2", "d3")}
    static_now: list[str] | None = None  # None: answers carry no staticDepIds

    def rewrite(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if "/dependencies/heartbeat" in path or "/dependencies/queue" in path:
            doc.pop("staticDepIds", None)
            if static_now is not None:
                doc["staticDepIds"] = list(static_now)
        return doc

    recorder.rewrite = rewrite
    with ModelOrigin() as origin:
        deps = {}
        for name, data in blobs.items():
            origin.add(f"/m/{name}.bin", data)
            deps[name] = dep(origin, f"/m/{name}.bin", f"models/loras/{name}.bin", data,
                             kind="dynamic" if name == "d3" else "static")
        setup_fleet(server, deps, static=["s1", "s2"], policy={
            "enabled": True, "minFreeBytes": 0, "maxDynamicBytes": MiB + MiB // 2,
            "evictionBatchMax": 5, "pinTtlSeconds": 0})
        env = agent_env(server, tmp_path, FCS_API_BASE_URL=recorder.url,
                        DM_HEARTBEAT_SECONDS="1")
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            assert wait_until(lambda: static_held(server) == ["s1", "s2"], 30)
            beats = len(recorder.bodies("/dependencies/heartbeat"))
            assert wait_until(lambda: len(recorder.bodies("/dependencies/heartbeat"))
                              > beats + 1, 20)
            assert static_held(server) == ["s1", "s2"]  # absent field: no change
            # The profile drops s2; the answers say so (the proxy adds the field, so this
            # holds whether or not the server sends it itself).
            put(server, "/admin/profiles/p1", {
                "staticDepIds": ["s1"], "prefetchOnBoot": True, "dynamicPolicy": {
                    "enabled": True, "minFreeBytes": 0, "maxDynamicBytes": MiB + MiB // 2,
                    "evictionBatchMax": 5, "pinTtlSeconds": 0}})
            static_now = ["s1"]
            wait_dynamic(server, ["s2"])
            agent.wait_for_line(r"Dep s2 is now dynamic")
            assert static_held(server) == ["s1"]
            assert state_deps(tmp_path)["s2"]["kind"] == "dynamic"
            # Now evictable: d3 pushes the dynamic bytes over the cap and s2 goes.
            run_job(server, ["d3"], "j1")
            finish_job(server, "j1")
            wait_dynamic(server, ["d3"])
            agent.wait_for_line(r"Evicted dynamic dep s2")
            assert not (tmp_path / "ws/ComfyUI/models/loras/s2.bin").exists()
            assert (tmp_path / "ws/ComfyUI/models/loras/s1.bin").exists()
            assert agent.stop() == 0


def test_job_needing_a_deleted_file_waits_for_it(server: Any, tmp_path: Path) -> None:
    """Deleted behind the agent's back: a job is ready only once the file is back, verified."""
    data, sha = payload(MiB)
    with ModelOrigin() as origin:
        # Slow enough that a job made ready from the stale inventory would be seen.
        origin.add("/m/d1.bin", data, rate=512 * 1024)
        setup_fleet(server, {"d1": dep(origin, "/m/d1.bin", "models/loras/d1.bin",
                                              data, kind="dynamic")},
                    static=[], policy={"enabled": False})
        env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="30")
        target = tmp_path / "ws/ComfyUI/models/loras/d1.bin"
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent")
            run_job(server, ["d1"], "j1")
            finish_job(server, "j1")
            wait_dynamic(server, ["d1"])
            fetched = len(origin.requests_for("/m/d1.bin"))
            target.unlink()
            # Submitted before any heartbeat could tell the server: it still lists d1.
            run_job(server, ["d1"], "j2")

            def ready_with_file() -> bool:
                if server.admin("GET", "/jobs/j2")[1]["state"] != "ready":
                    return False
                # The moment it is ready, the file must be there with the right bytes.
                assert target.exists(), "job ready while its file is missing"
                assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
                return True

            assert wait_until(ready_with_file, 60), agent.log()
            assert len(origin.requests_for("/m/d1.bin")) > fetched
            finish_job(server, "j2")
            assert agent.stop() == 0
