"""The agent (module and bundle) against the real depman server and a local origin."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.support.origin import ModelOrigin
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

MiB = 1024 * 1024


def agent_env(server: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FCS_API_BASE_URL": server.base_url, "SERVER_TYPE": "st",
        "DEPENDENCY_MANAGER_SHARED_SECRET": server.shared_secret, "DM_INSTANCE_ID": "i1",
        "WORKSPACE": str(tmp_path / "ws"), "DM_ALLOWED_DOMAINS": "127.0.0.1,localhost",
        "DM_HEARTBEAT_SECONDS": "5", "DM_POLL_SECONDS": "0.5", "DM_ITEM_RETRY_SECONDS": "0.1",
        "DM_MIN_SEGMENT_BYTES": "1MiB", "DM_PROGRESS_SECONDS": "1", **extra,
    }


def put(server: Any, path: str, body: dict[str, Any]) -> None:
    status, answer = server.admin("PUT", path, body)
    assert status in (200, 201), (path, status, answer)


def dep(origin: ModelOrigin, path: str, rel: str, data: bytes, **kw: Any) -> dict[str, Any]:
    return {"url": origin.url(path), "auth": "none", "destRelativePath": rel,
            "sha256": hashlib.sha256(data).hexdigest(), "expectedSizeBytes": len(data),
            "kind": "static", **kw}


def setup_fleet(server: Any, deps: dict[str, dict[str, Any]], static: list[str],
                policy: dict[str, Any] | None = None) -> None:
    for dep_id, body in deps.items():
        put(server, f"/admin/deps/{dep_id}", body)
    put(server, "/admin/profiles/p1", {"staticDepIds": static, "prefetchOnBoot": True,
                                       "dynamicPolicy": policy or {"enabled": False}})
    put(server, "/admin/server-types/st",
        {"modelManagement": {"mode": "dependency_manager_v1", "profileId": "p1"}})
    put(server, "/admin/instances/i1", {"ip": "10.0.0.1", "serverType": "st"})


def instance(server: Any) -> dict[str, Any]:
    status, body = server.admin("GET", "/admin/instances/i1")
    assert status == 200, body
    return body.get("dependencyManager") or {}


def items(server: Any) -> dict[str, dict[str, Any]]:
    status, body = server.admin("GET", "/admin/queues/i1/items")
    assert status == 200, body
    return {i["depId"]: i for i in body["items"]}


def test_bundle_from_server_installs_and_refuses(server: Any, tmp_path: Path) -> None:
    good, good_sha = payload(3 * MiB + 7)
    bad, _ = payload(MiB)
    with ModelOrigin() as origin:
        origin.add("/hf/good.bin", good, redirect_host="localhost",
                   require_auth="Bearer hf_test_token")
        origin.add("/hf/bad.bin", bad, corrupt="always")
        origin.add("/hf/evil.bin", b"x", redirect="http://evil.invalid/steal")
        origin.add("/civ/c.bin", b"y")
        setup_fleet(server, {
            "good": dep(origin, "/hf/good.bin", "models/checkpoints/good.safetensors", good,
                        auth="hf_token"),
            "badsha": dep(origin, "/hf/bad.bin", "models/loras/bad.safetensors", bad),
            "evil": dep(origin, "/hf/evil.bin", "models/loras/evil.bin", b"x"),
            "notoken": dep(origin, "/civ/c.bin", "models/loras/c.bin", b"y",
                           auth="civitai_token"),
        }, static=["good", "badsha", "evil", "notoken"])

        with urllib.request.urlopen(server.root_url + "/agent/depman-agent.pyz") as resp:
            bundle_data, header_sha = resp.read(), resp.headers["X-Depman-Agent-Sha256"]
        assert hashlib.sha256(bundle_data).hexdigest() == header_sha
        bundle = tmp_path / "agent.pyz"
        bundle.write_bytes(bundle_data)

        env = agent_env(server, tmp_path, HF_TOKEN="hf_test_token",
                        DM_DOWNLOAD_CONNECTIONS="3")
        with AgentProcess(env, bundle=bundle) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=i1")
            done = wait_until(lambda: all(i["state"] in ("succeeded", "failed")
                                          for i in items(server).values())
                              and len(items(server)) == 4, 60)
            assert done, items(server)
            queue = items(server)
            assert queue["good"]["state"] == "succeeded"
            assert "sha256 mismatch" in queue["badsha"]["error"]
            assert "Download domain not allowed: evil.invalid" in queue["evil"]["error"]
            # The error says which setting admits the host (the fix is on the instance).
            assert "add evil.invalid to DM_ALLOWED_DOMAINS" in queue["evil"]["error"]
            assert "Missing CIVITAI_TOKEN" in queue["notoken"]["error"]
            assert wait_until(lambda: instance(server).get("installedDepIdsStatic")
                              == ["good"], 20), instance(server)
            assert agent.stop() == 0
        log = agent.log()
    target = tmp_path / "ws/ComfyUI/models/checkpoints/good.safetensors"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == good_sha
    assert not (tmp_path / "ws/ComfyUI/models/loras/bad.safetensors").exists()
    cdn = [r for r in origin.requests if r.host.startswith("localhost")]
    assert cdn and all(r.authorization is None for r in cdn)
    assert "hf_test_token" not in log and server.shared_secret not in log
    assert "token=secret" not in log  # CDN query strings are never logged
    assert "Dependency agent stopped" in log


def test_path_traversal_refused(server: Any, tmp_path: Path) -> None:
    with ModelOrigin() as origin:
        origin.add("/m/x.bin", b"data")
        for rel in ("../outside.bin", "/etc/evil.bin"):
            status, _ = server.admin("PUT", "/admin/deps/esc", dep(
                origin, "/m/x.bin", rel, b"data"))
            if status >= 400:
                continue  # the server refuses it already; the agent test is in test_eviction
            setup_fleet(server, {}, static=["esc"])
            with AgentProcess(agent_env(server, tmp_path)) as agent:
                agent.wait_for_line(r"Registered dependency agent")
                assert wait_until(lambda: items(server).get("esc", {}).get("state")
                                  == "failed", 30)
                assert "Refusing" in items(server)["esc"]["error"]
            assert not (tmp_path / "ws" / "outside.bin").exists()


def wait_dynamic(server: Any, expected: list[str], timeout: float = 30) -> None:
    assert wait_until(lambda: instance(server).get("installedDepIdsDynamic") == expected,
                      timeout), instance(server)


def run_job(server: Any, dep_ids: list[str], job_id: str) -> None:
    status, body = server.admin("POST", "/jobs", {"serverType": "st", "depIds": dep_ids,
                                                  "jobId": job_id})
    assert status in (200, 201), body


def finish_job(server: Any, job_id: str) -> None:
    assert wait_until(lambda: server.admin("GET", f"/jobs/{job_id}")[1]["state"] == "ready", 30)
    server.admin("POST", f"/jobs/{job_id}/start")
    status, body = server.admin("POST", f"/jobs/{job_id}/complete", {"ok": True})
    assert status == 200, body


def dynamic_loras(server: Any, origin: ModelOrigin, names: tuple[str, ...] = ("d1", "d2", "d3"),
                  *, pin_ttl_seconds: int) -> dict[str, bytes]:
    """Dynamic LoRAs of 1 MiB each, served by `origin`, under a 2.5 MiB cache cap."""
    blobs = {name: payload(MiB)[0] for name in names}
    deps = {}
    for name, data in blobs.items():
        origin.add(f"/m/{name}.bin", data)
        deps[name] = dep(origin, f"/m/{name}.bin", f"models/loras/{name}.bin", data,
                         kind="dynamic")
    setup_fleet(server, deps, static=[], policy={
        "enabled": True, "minFreeBytes": 0, "maxDynamicBytes": 2 * MiB + MiB // 2,
        "evictionBatchMax": 5, "pinTtlSeconds": pin_ttl_seconds})
    return blobs


def test_touch_missing_file_and_lru_eviction(server: Any, tmp_path: Path) -> None:
    with ModelOrigin() as origin:
        blobs = dynamic_loras(server, origin, pin_ttl_seconds=0)
        env = agent_env(server, tmp_path, DM_VERBOSE_PROGRESS="1")
        loras = tmp_path / "ws/ComfyUI/models/loras"
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=i1")
            run_job(server, ["d1"], "j1")
            finish_job(server, "j1")
            run_job(server, ["d2"], "j2")
            finish_job(server, "j2")
            wait_dynamic(server, ["d1", "d2"])
            # d1 vanishes behind the agent's back: a touch must download it again.
            (loras / "d1.bin").unlink()
            run_job(server, ["d1"], "j3")
            # The server still believed d1 was held, so j3 may be ready at once; the touch
            # item it queued is what brings the file back.
            assert wait_until(lambda: (loras / "d1.bin").exists()
                              and items(server)["d1"]["state"] == "succeeded", 30)
            assert (loras / "d1.bin").read_bytes() == blobs["d1"]
            finish_job(server, "j3")
            # d3 pushes the dynamic bytes over the cap: d2 is now least recently used.
            run_job(server, ["d3"], "j4")
            finish_job(server, "j4")
            wait_dynamic(server, ["d1", "d3"])
            assert not (loras / "d2.bin").exists()
            agent.wait_for_line(r"Evicted dynamic dep d2")
            assert agent.stop() == 0


def test_a_cache_left_over_its_cap_comes_back_under_it_once_pins_lapse(
        server: Any, tmp_path: Path) -> None:
    # j2's model arrives while j1's two were used a moment ago: the install can evict
    # neither, and the cache sits over its cap. No further install comes; the agent
    # must still bring it back once the pin window has passed.
    with ModelOrigin() as origin:
        dynamic_loras(server, origin, pin_ttl_seconds=6)
        env = agent_env(server, tmp_path, DM_HEARTBEAT_SECONDS="1")
        loras = tmp_path / "ws/ComfyUI/models/loras"
        with AgentProcess(env) as agent:
            agent.wait_for_line(r"Registered dependency agent: instanceId=i1")
            run_job(server, ["d1", "d2"], "j1")
            finish_job(server, "j1")
            run_job(server, ["d3"], "j2")
            finish_job(server, "j2")
            wait_dynamic(server, ["d1", "d2", "d3"])
            assert instance(server)["dynamicBytesUsed"] == 3 * MiB
            # The oldest use goes first; one is enough to fit the cap again.
            assert wait_until(lambda: len(instance(server)["installedDepIdsDynamic"]) == 2, 30)
            held = instance(server)["installedDepIdsDynamic"]
            assert "d3" in held and sorted(p.name for p in loras.iterdir()) == [
                f"{d}.bin" for d in held]
            assert instance(server)["dynamicBytesUsed"] == 2 * MiB
            agent.wait_for_line(r"Evicted dynamic dep d[12]")
            assert agent.stop() == 0
