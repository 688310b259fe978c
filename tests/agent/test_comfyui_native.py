"""Model roots (extra_model_paths.yaml), folder models and the ComfyUI listing check."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from depman.agent.errors import UnsafePath
from depman.agent.model_roots import ModelRoots, parse_roots
from depman.agent.sidefiles import partial_path
from tests.agent.conftest import payload
from tests.agent.running import AgentProcess
from tests.agent.test_agent_with_server import agent_env, instance, items, put, setup_fleet
from tests.support.hubs import CivitaiVersion
from tests.support.origin import ModelOrigin
from tests.support.server import shared_fake_hubs
from tests.support.wait import wait_until

pytest.importorskip("depman.server")

MiB = 1024 * 1024

ROOTS_YAML = """\
# a shared volume with the models of several instances
shared:
    base_path: {shared}
    is_default: true
    # LyCORIS files too (a comment inside a block scalar would be part of the path)
    loras: |
        loras
        lycoris
    checkpoints: "ckpts"
    clip: text    # legacy name of text_encoders

a111:
    base_path: ../webui/
    checkpoints: models/Stable-diffusion
"""


def test_extra_model_paths_subset_is_parsed(tmp_path: Path) -> None:
    text = ROOTS_YAML.format(shared=tmp_path / "shared")
    roots = parse_roots(text, tmp_path / "ComfyUI")
    shared = roots["shared"]
    assert shared.is_default
    assert shared.folders["loras"] == [tmp_path / "shared/loras", tmp_path / "shared/lycoris"]
    assert shared.folder_for("checkpoints") == tmp_path / "shared/ckpts"
    assert shared.folder_for("text_encoders") == tmp_path / "shared/text"
    a111 = roots["a111"]
    assert a111.folder_for("checkpoints") == tmp_path / "ComfyUI/../webui/models/Stable-diffusion"
    located = ModelRoots(roots).locate(PurePosixPath("models/clip/t5/x.safetensors"), "shared")
    assert located == (tmp_path / "shared/text/t5/x.safetensors", tmp_path / "shared/text")
    with pytest.raises(UnsafePath, match="lists no folder for 'vae'"):
        ModelRoots(roots).locate(PurePosixPath("models/vae/x.safetensors"), "shared")
    with pytest.raises(UnsafePath, match="Unknown model root 'nope'"):
        ModelRoots(roots).locate(PurePosixPath("models/vae/x.safetensors"), "nope")


@contextmanager
def fake_comfyui(folders: dict[str, list[Path]]) -> Iterator[str]:
    """GET /models/{folder} as ComfyUI answers it: the files under the folders it scans."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/models/") or name not in folders:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            found = sorted(
                str(p.relative_to(base))
                for base in folders[name]
                for p in base.rglob("*")
                if p.is_file()
            )
            body = json.dumps(found).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def file_doc(origin: ModelOrigin, path: str, data: bytes) -> dict[str, Any]:
    return {
        "path": path.rsplit("/m/", 1)[-1],
        "url": origin.url(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sizeBytes": len(data),
    }


def test_roots_folder_models_and_the_comfyui_check(server: Any, tmp_path: Path) -> None:
    comfy = tmp_path / "ws/ComfyUI"
    shared = tmp_path / "shared"
    comfy.mkdir(parents=True)
    (comfy / "extra_model_paths.yaml").write_text(ROOTS_YAML.format(shared=shared))
    lora, _ = payload(MiB, seed=1)
    ckpt, _ = payload(MiB, seed=2)
    index = b'{"_class_name": "StableDiffusionXLPipeline"}'
    unet, _ = payload(2 * MiB, seed=3)
    with ModelOrigin() as origin:
        for path, data in (
            ("/lora.bin", lora),
            ("/ckpt.bin", ckpt),
            ("/m/model_index.json", index),
            ("/m/unet/w.safetensors", unet),
        ):
            origin.add(path, data)
        deps = {
            "lora-shared": {
                "url": origin.url("/lora.bin"),
                "type": "loras",
                "filename": "style/px.safetensors",
                "root": "shared",
                "sha256": hashlib.sha256(lora).hexdigest(),
                "kind": "static",
            },
            "ckpt-shared": {
                "url": origin.url("/ckpt.bin"),
                "type": "checkpoints",
                "filename": "base.safetensors",
                "root": "shared",
                "sha256": hashlib.sha256(ckpt).hexdigest(),
                "kind": "static",
            },
            "sdxl-diffusers": {
                "type": "diffusers",
                "filename": "sdxl",
                "kind": "static",
                "files": [
                    file_doc(origin, "/m/model_index.json", index),
                    file_doc(origin, "/m/unet/w.safetensors", unet),
                ],
            },
        }
        t5, _ = payload(MiB // 2, seed=7)
        origin.add("/t5.bin", t5)
        # No root of its own: the profile's root (below) applies.
        deps["t5-profile-root"] = {"url": origin.url("/t5.bin"), "type": "clip",
                                   "filename": "t5.safetensors", "kind": "static",
                                   "sha256": hashlib.sha256(t5).hexdigest()}
        setup_fleet(server, deps, static=list(deps))
        put(server, "/admin/profiles/p1", {"staticDepIds": list(deps),
                                                  "prefetchOnBoot": True, "root": "shared"})
        # This ComfyUI scans the shared loras but not the shared checkpoints folder.
        scanned = {
            "loras": [comfy / "models/loras", shared / "loras"],
            "checkpoints": [comfy / "models/checkpoints"],
        }
        with (
            fake_comfyui(scanned) as comfy_url,
            AgentProcess(agent_env(server, tmp_path, DM_COMFYUI_URL=comfy_url)) as agent,
        ):
            agent.wait_for_line(r"Model roots from .*: a111, shared")
            assert wait_until(
                lambda: (
                    sorted(instance(server).get("installedDepIdsStatic") or [])
                    == sorted(deps)
                ),
                60,
            ), instance(server)
            queue = items(server)
            assert queue["lora-shared"]["error"] is None
            assert queue["ckpt-shared"]["state"] == "succeeded"
            assert "does not list base.safetensors in checkpoints" in queue["ckpt-shared"]["error"]
            assert agent.stop() == 0
    assert (shared / "loras/style/px.safetensors").read_bytes() == lora
    assert (shared / "ckpts/base.safetensors").read_bytes() == ckpt
    assert (shared / "text/t5.safetensors").read_bytes() == t5
    assert not (comfy / "models/loras").exists()
    folder = comfy / "models/diffusers/sdxl"
    assert (folder / "model_index.json").read_bytes() == index
    assert (folder / "unet/w.safetensors").read_bytes() == unet
    assert not (comfy / "models/diffusers/sdxl.partial").exists()


def test_folder_model_survives_kill_9_and_is_evicted_as_one(
    server: Any, tmp_path: Path
) -> None:
    first, _ = payload(MiB, seed=4)
    second, _ = payload(4 * MiB, seed=5)
    other, _ = payload(MiB, seed=6)
    comfy = tmp_path / "ws/ComfyUI"
    folder = comfy / "models/diffusers/m"
    staging = comfy / "models/diffusers/m.partial"
    with ModelOrigin() as origin:
        origin.add("/m/a.safetensors", first)
        origin.add("/m/b/c.safetensors", second, rate=float(MiB))
        origin.add("/other.bin", other)
        deps = {
            "m": {
                "type": "diffusers",
                "filename": "m",
                "kind": "dynamic",
                "files": [
                    file_doc(origin, "/m/a.safetensors", first),
                    file_doc(origin, "/m/b/c.safetensors", second),
                ],
            },
            "other": {
                "url": origin.url("/other.bin"),
                "type": "loras",
                "filename": "o.bin",
                "sha256": hashlib.sha256(other).hexdigest(),
                "kind": "dynamic",
            },
        }
        setup_fleet(
            server,
            deps,
            static=[],
            policy={
                "enabled": True,
                "minFreeBytes": 0,
                "maxDynamicBytes": 5 * MiB + MiB // 2,
                "evictionBatchMax": 5,
                "pinTtlSeconds": 0,
            },
        )
        env = agent_env(server, tmp_path, DM_DOWNLOAD_CONNECTIONS="1")
        status, body = server.admin(
            "POST", "/jobs", {"serverType": "st", "depIds": ["m"], "jobId": "jm"}
        )
        assert status == 200, body
        with AgentProcess(env) as agent:
            # The first file is verified and the second on its way: kill -9.
            assert wait_until(
                lambda: (
                    partial_path(staging / "b/c.safetensors").exists()
                    and (staging / ".depman-verified.json").exists()
                ),
                30,
            )
            assert not folder.exists()
            agent.stop(signal.SIGKILL)
        assert not folder.exists()  # never half there
        origin.files["/m/b/c.safetensors"].rate = None
        with AgentProcess(env) as agent:
            assert wait_until(
                lambda: "m" in (instance(server).get("installedDepIdsDynamic") or []), 60
            ), instance(server)
            assert (folder / "a.safetensors").read_bytes() == first
            assert (folder / "b/c.safetensors").read_bytes() == second
            assert not staging.exists()
            # The verified first file was not fetched again after the kill.
            assert len(origin.requests_for("/m/a.safetensors")) == 1
            status, body = server.admin("POST", "/jobs/jm/start")
            status, body = server.admin("POST", "/jobs/jm/complete", {"ok": True})
            assert status == 200, body
            # One more dynamic dep goes over the cap: the folder model leaves as one unit.
            status, body = server.admin(
                "POST", "/jobs", {"serverType": "st", "depIds": ["other"], "jobId": "jo"}
            )
            assert status == 200, body
            agent.wait_for_line(r"Evicted dynamic dep m ")
            assert wait_until(
                lambda: instance(server).get("installedDepIdsDynamic") == ["other"], 30
            ), instance(server)
            assert agent.stop() == 0
    assert not folder.exists()
    leftovers = [p.name for p in (comfy / "models/diffusers").iterdir()]
    assert leftovers == [], leftovers
    state = json.loads((tmp_path / "ws/dependency_agent_state.json").read_text())
    assert set(state.get("deps", {})) == {"other"}
    assert os.path.exists(comfy / "models/loras/o.bin")


def test_civitai_source_downloads_through_its_storage_redirect(
    server: Any, tmp_path: Path
) -> None:
    """civitai:// resolved by the server; the agent follows the redirect to the storage
    host (another host name) with the token sent to the catalog host only."""
    data, digest = payload(MiB, seed=8)
    hubs = shared_fake_hubs()
    version = str(900000 + os.getpid() % 99999)
    hubs.versions[version] = CivitaiVersion(
        "LORA", [("civ.safetensors", data, "Model", True)], storage_host="localhost"
    )
    setup_fleet(server, {"civ": {"url": f"civitai://{version}", "auth": "civitai_token",
                                        "kind": "static"}}, static=["civ"])
    status, dep = server.admin("GET", "/admin/deps/civ")
    assert status == 200 and dep["sha256"] == digest, dep
    env = agent_env(server, tmp_path, CIVITAI_TOKEN="civ-secret-token")
    with AgentProcess(env) as agent:
        assert wait_until(lambda: instance(server).get("installedDepIdsStatic")
                          == ["civ"], 30), instance(server)
        assert agent.stop() == 0
    assert (tmp_path / "ws/ComfyUI/models/loras/civ.safetensors").read_bytes() == data
    seen = [(p, a) for p, a in hubs.authorizations if version in p]
    assert ("/api/download/models/" + version, "Bearer civ-secret-token") in seen
    storage = [a for p, a in seen if p.startswith("/storage/")]
    assert storage and all(a is None for a in storage)
    assert "civ-secret-token" not in agent.log()
