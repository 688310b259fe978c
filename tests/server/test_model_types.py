"""Catalog entries in ComfyUI terms: type + filename, refused folders, roots, folder models."""

from __future__ import annotations

from typing import Any

import pytest

from depman.core import model_types
from tests.server.fleet import dep_doc, make_fleet, uid
from tests.support.server import RunningServer

SHA = "ab" * 32


def put(server: RunningServer, dep_id: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return server.admin("PUT", f"/admin/deps/{dep_id}", doc)


def typed(**extra: Any) -> dict[str, Any]:
    doc = {"url": "https://huggingface.co/o/r/resolve/main/x.safetensors", "kind": "dynamic"}
    doc.update(extra)
    return doc


def test_type_and_filename_derive_the_path(server: RunningServer) -> None:
    dep_id = uid("typed")
    status, body = put(server, dep_id, typed(type="loras", filename="style/pixel.safetensors"))
    assert status == 200, body
    assert body["destRelativePath"] == "models/loras/style/pixel.safetensors"
    assert (body["type"], body["filename"]) == ("loras", "style/pixel.safetensors")


@pytest.mark.parametrize(
    ("alias", "canonical", "folder"),
    [("clip", "text_encoders", "text_encoders"), ("unet", "diffusion_models", "diffusion_models")],
)
def test_legacy_type_names_are_aliases(
    server: RunningServer, alias: str, canonical: str, folder: str
) -> None:
    status, body = put(server, uid("alias"), typed(type=alias, filename="t5.safetensors"))
    assert status == 200, body
    assert body["type"] == canonical
    assert body["destRelativePath"] == f"models/{folder}/t5.safetensors"


def test_v1_path_keeps_working_and_is_typed(server: RunningServer) -> None:
    # models/clip/ is scanned by ComfyUI for text encoders: the entry stays as written.
    dep_id = uid("v1")
    status, body = put(server, dep_id,
                       dep_doc(dep_id, destRelativePath="models/clip/c.safetensors"))
    assert status == 200, body
    assert body["destRelativePath"] == "models/clip/c.safetensors"
    assert (body["type"], body["filename"]) == ("text_encoders", "c.safetensors")


def test_a_plain_url_gives_the_filename_it_ends_with(server: RunningServer) -> None:
    dep_id = uid("named")
    url = "https://example.com/files/grain%20v2.safetensors?download=true"
    status, body = put(server, dep_id, typed(type="loras", url=url))
    assert status == 200, body
    assert body["filename"] == "grain v2.safetensors"
    assert body["destRelativePath"] == "models/loras/grain v2.safetensors"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"destRelativePath": "models/lora/x.safetensors"},
            "ComfyUI does not scan models/lora/; did you mean models/loras/?",
        ),
        (
            {"destRelativePath": "models/checkpoint/x.safetensors"},
            "did you mean models/checkpoints/?",
        ),
        ({"destRelativePath": "models/x.safetensors"}, "models/<folder>/<file>"),
        ({"type": "lora", "filename": "x.safetensors"}, "did you mean 'loras'?"),
        (
            {"type": "loras", "url": "https://civitai.com/api/download/models/1"},
            "filename is required with type (the url's last segment is not a file name)",
        ),
        ({"type": "loras", "filename": "../x.safetensors"}, "no '..'"),
        (
            {"type": "loras", "filename": "x.safetensors", "destRelativePath": "models/vae/x"},
            "disagrees with type 'loras'",
        ),
        ({"type": "diffusers", "filename": "sdxl"}, "folder model"),
        ({"type": "loras", "filename": "x.bin", "root": "../shared"}, "root must name"),
    ],
)
def test_refused_entries_name_the_problem(
    server: RunningServer, doc: dict[str, Any], message: str
) -> None:
    dep_id = uid("refused")
    body_in = typed(**doc)
    status, body = put(server, dep_id, body_in)
    assert status == 422, body
    assert body["error"]["code"] == "validation_failed"
    assert message in body["error"]["message"]
    assert server.admin("GET", f"/admin/deps/{dep_id}")[0] == 404


def test_fleet_refusal_names_the_document(server: RunningServer) -> None:
    status, body = server.admin(
        "POST",
        "/admin/fleet",
        {"deps": {"typo": typed(destRelativePath="models/lora/x.safetensors")}},
    )
    assert status == 422
    assert body["error"]["message"].startswith("deps.typo: ")
    assert "models/loras/" in body["error"]["message"]


def test_folder_model_sums_its_files_and_reaches_the_agent(server: RunningServer) -> None:
    fleet = make_fleet(server, static=[])
    dep_id = uid("diffusers")
    files = [
        {
            "path": "model_index.json",
            "url": "https://hf.co/a/model_index.json",
            "sizeBytes": 10,
            "sha256": SHA,
        },
        {
            "path": "unet/diffusion_pytorch_model.safetensors",
            "url": "https://hf.co/a/u",
            "sizeBytes": 1000,
            "sha256": SHA.upper(),
        },
    ]
    status, body = put(
        server,
        dep_id,
        {
            "type": "diffusers",
            "filename": "sdxl-base",
            "files": files,
            "kind": "dynamic",
            "root": "shared",
        },
    )
    assert status == 200, body
    assert body["destRelativePath"] == "models/diffusers/sdxl-base"
    assert body["expectedSizeBytes"] == 1010 and body["sha256"] is None
    assert body["files"][1]["sha256"] == SHA and body["root"] == "shared"
    agent = fleet.register(fleet.add_instance("folder"))
    status, job = server.admin(
        "POST", "/jobs", {"serverType": fleet.server_type, "depIds": [dep_id]}
    )
    assert status == 200, job
    status, answer = agent.poll()
    assert status == 200, answer
    item = next(i for i in answer["items"] if i["depId"] == dep_id)
    resolved = item["resolved"]
    # A v1 agent fails the item at its domain check instead of writing one file there.
    assert resolved["url"].startswith("https://folder-model.invalid/")
    assert resolved["root"] == "shared"
    assert [f["path"] for f in resolved["files"]] == [f["path"] for f in files]


def test_profile_root_is_stored_and_sent_on_register(server: RunningServer) -> None:
    fleet = make_fleet(server, static=[])
    status, body = server.admin(
        "PUT", f"/admin/profiles/{fleet.profile_id}", {"staticDepIds": [], "root": "shared"}
    )
    assert status == 200 and body["root"] == "shared", body
    status, answer = server.request(
        "POST",
        "/api/dependencies/register",
        {"serverType": fleet.server_type, "instanceId": fleet.add_instance("rooted")},
        {"X-DM-Secret": server.shared_secret},
    )
    assert status == 200, answer
    assert answer["profile"]["root"] == "shared"


def test_every_comfyui_folder_is_accepted_and_nothing_else() -> None:
    for key, folders in model_types.COMFYUI_FOLDERS.items():
        for folder in folders:
            assert model_types.split_models_path(f"models/{folder}/a.bin") == (key, "a.bin")
    assert model_types.split_models_path("models/lora/a.bin") is None
    assert model_types.closest("text_encoder", list(model_types.FOLDER_TO_TYPE)) == "text_encoders"
