"""`workflow import` and `apply` say what they did: unverified entries, hosts the agents
refuse by default, sources the server could not reach (and the setting that changes it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli, write_fleet
from tests.support.server import RunningServer, run_server


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose Hugging Face endpoint answers nothing (a closed loopback port)."""
    tmp = tmp_path_factory.mktemp("offline")
    env = {"DEPMAN_HF_ENDPOINT": "http://127.0.0.1:9"}
    with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=env, cwd=tmp) as server:
        yield server


def test_import_reports_unverified_and_unreachable_and_exits_1(
    offline_server: RunningServer, tmp_path: Path
) -> None:
    models = [
        {
            "name": "grain.safetensors",
            "url": "https://models.example.com/files/grain.safetensors",
            "directory": "loras",
        },
        {
            "name": "base.safetensors",
            "url": "https://huggingface.co/Org/Repo/resolve/main/base.safetensors",
            "directory": "checkpoints",
        },
    ]
    workflow = {
        "nodes": [
            {"id": 1, "type": "LoraLoaderModelOnly", "widgets_values": ["grain.safetensors", 1],
             "properties": {"models": models}},
        ]
    }
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    result = run_cli(offline_server, "workflow", "import", str(path))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "added grain: loras/grain.safetensors (unverified: no sha256)" in out
    assert "could not reach Hugging Face at http://127.0.0.1:9" in out
    assert "DEPMAN_HF_ENDPOINT" in out and "the server, not the CLI" in out
    assert "1 added, 1 skipped" in out
    assert "without a sha256 (unverified" in out
    assert "models.example.com is not in the agents' default DM_ALLOWED_DOMAINS" in out


def test_apply_fills_the_filename_from_the_url_and_warns(
    offline_server: RunningServer, tmp_path: Path
) -> None:
    fleet = write_fleet(
        tmp_path,
        """
        version: 1
        deps:
          film-grain:
            url: https://models.example.com/loras/film_grain_v2.safetensors
            type: loras
            kind: dynamic
        """,
    )
    result = run_cli(offline_server, "apply", "-f", str(fleet))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "warning: deps.film-grain: no sha256" in out
    assert "models.example.com is not in the agents' default DM_ALLOWED_DOMAINS" in out
    status, dep = offline_server.admin("GET", "/admin/deps/film-grain")
    assert status == 200 and dep["filename"] == "film_grain_v2.safetensors"
    assert dep["destRelativePath"] == "models/loras/film_grain_v2.safetensors"
