"""The real ComfyUI workflow templates (PyPI `comfyui-workflow-templates-json`) as the corpus.

For every template: `depman workflow deps` runs without error, and every entry of
every node's `properties.models` (subgraph definitions included) is found with its
type and file name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from depman.core.model_types import canonical_type
from depman.core.workflows import workflow_models
from depman.errors import ValidationFailed
from tests.cli.helpers import run_cli
from tests.support.hubs import FakeHubs
from tests.support.server import RunningServer, run_server

TEMPLATES = Path(str(resources.files("comfyui_workflow_templates_json") / "templates"))
# Files of the package that are not workflows: indexes and the search index options.
NOT_WORKFLOWS = ("index", "fuse_options")
# properties.models entries across the templates of the locked package version (0.1.123).
EXPECTED_MODEL_ENTRIES = 1204


def template_paths() -> list[Path]:
    return sorted(p for p in TEMPLATES.glob("*.json") if not p.name.startswith(NOT_WORKFLOWS))


def declared_models(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(type, filename) of every properties.models entry, subgraphs included."""
    graphs = [document.get("nodes") or []]
    graphs += [
        s.get("nodes") or [] for s in (document.get("definitions") or {}).get("subgraphs") or []
    ]
    for nodes in graphs:
        for node in nodes:
            for entry in (node.get("properties") or {}).get("models") or []:
                try:
                    kind = canonical_type(entry["directory"])
                except ValidationFailed:
                    kind = entry["directory"]
                yield kind, entry["name"].replace("\\", "/")


def test_every_declared_model_of_every_template_is_found() -> None:
    paths = template_paths()
    assert len(paths) > 500
    total = found = 0
    for path in paths:
        document = json.loads(path.read_text())
        keys = {ref.key for ref in workflow_models(document)}
        for key in declared_models(document):
            total += 1
            assert key in keys, (path.name, key)
            found += 1
    assert found == total == EXPECTED_MODEL_ENTRIES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("workflows")
    with FakeHubs(auto=True) as hubs:
        env = {"DEPMAN_HF_ENDPOINT": hubs.url, "DEPMAN_CIVITAI_ENDPOINT": hubs.url}
        with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp, extra_env=env) as running:
            yield running


@pytest.mark.slow  # 500+ templates through the CLI and the server
def test_workflow_deps_runs_on_every_template(server: RunningServer) -> None:
    for path in template_paths():
        result = run_cli(server, "workflow", "deps", str(path))
        assert result.exit_code == 0, (path.name, result.output)
        assert "model files" in result.output


def test_import_then_every_model_is_known_and_a_job_can_be_submitted(
    server: RunningServer,
) -> None:
    path = TEMPLATES / "hidream_i1_full.json"
    before = run_cli(server, "workflow", "deps", str(path))
    assert "not in the catalog" in before.output
    imported = run_cli(server, "workflow", "import", str(path), "--kind", "static")
    assert imported.exit_code == 0, imported.output
    assert "added" in imported.output and "0 skipped" in imported.output
    after = run_cli(server, "workflow", "deps", str(path))
    assert "every model is in the catalog" in after.output, after.output
    status, deps = server.admin("GET", "/admin/deps")
    hidream = [d for d in deps["deps"] if d["filename"] == "hidream_i1_full_fp8.safetensors"]
    assert hidream and hidream[0]["type"] == "diffusion_models"
    # Resolved from the template's huggingface.co link: pinned, hashed, sized.
    assert hidream[0]["source"].startswith("hf://Comfy-Org/HiDream-I1_ComfyUI/")
    assert hidream[0]["sha256"] and hidream[0]["expectedSizeBytes"]

    status, _ = server.admin("PUT", "/admin/server-types/wf", {})
    assert status == 200
    result = run_cli(server, "jobs", "submit", "--server-type", "wf", "--workflow", str(path))
    assert result.exit_code == 0, result.output
    status, jobs = server.admin("GET", "/jobs")
    job = jobs["jobs"][0]
    assert set(job["depIds"]) == {d["depId"] for d in deps["deps"]}


def test_api_format_and_unknown_models(server: RunningServer, tmp_path: Path) -> None:
    api = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd\\v15.ckpt"}},
        "7": {
            "class_type": "LoraLoader",
            "inputs": {"lora_name": "px.safetensors", "model": ["4", 0]},
        },
        "9": {"class_type": "SomeCustomLoader", "inputs": {"weights": "odd.pth"}},
    }
    status, body = server.admin("POST", "/admin/workflows/deps", {"workflow": api})
    assert status == 200, body
    got = {(m["type"], m["filename"]) for m in body["models"]}
    assert got == {("checkpoints", "sd/v15.ckpt"), ("loras", "px.safetensors"), (None, "odd.pth")}
    assert len(body["unknown"]) == 3
    status, body = server.admin(
        "POST", "/jobs", {"serverType": "wf", "depIds": [], "workflow": {"prompt": api}}
    )
    assert status == 422 and "catalog does not have" in body["error"]["message"]
    status, body = server.admin("POST", "/admin/workflows/deps", {"workflow": {"x": 1}})
    assert status == 422 and "not a ComfyUI workflow" in body["error"]["message"]


def test_import_skips_what_it_cannot_add_and_keeps_the_rest(server: RunningServer) -> None:
    hf = "https://huggingface.co/Org/Repo/resolve/main/split/{}?download=true"
    workflow = {
        "nodes": [
            {
                "id": 1,
                "type": "UNETLoader",
                "widgets_values": ["good-unet.safetensors", "default"],
                "properties": {
                    "models": [
                        {
                            "name": "good-unet.safetensors",
                            "url": hf.format("good-unet.safetensors"),
                            "directory": "diffusion_models",
                        },
                        {
                            "name": "odd.safetensors",
                            "url": hf.format("odd.safetensors"),
                            "directory": "not_a_folder",
                        },
                        {"name": "nourl.safetensors", "directory": "loras"},
                    ]
                },
            }
        ]
    }
    status, body = server.admin("POST", "/admin/workflows/import", {"workflow": workflow})
    assert status == 200, body
    assert [m["filename"] for m in body["created"]] == ["good-unet.safetensors"]
    reasons = {m["filename"]: m["reason"] for m in body["skipped"]}
    assert "not a ComfyUI model folder" in reasons["odd.safetensors"]
    assert "no url" in reasons["nourl.safetensors"]
    dep_id = body["created"][0]["depId"]
    status, dep = server.admin("GET", f"/admin/deps/{dep_id}")
    assert status == 200 and dep["source"] == "hf://Org/Repo/split/good-unet.safetensors@main"
