"""hf:// and civitai:// sources, resolved by the server against loopback fakes of both APIs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.fleet import uid
from tests.support.hubs import CivitaiVersion, FakeHubs
from tests.support.server import RunningServer, run_server

BIG = b"w" * 1000
BIG2 = b"v" * 1500
SMALL = b'{"_class_name": "X"}'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def hubs() -> Iterator[FakeHubs]:
    with FakeHubs() as fake:
        repo = fake.repo("org/flux")
        first = repo.push({"split/vae/ae.safetensors": BIG, "README.md": b"hi"})
        repo.refs["v1"] = first
        fake.repo("org/sdxl").push(
            {"unet/model.safetensors": BIG, "unet/config.json": SMALL, "vae/x.safetensors": BIG2}
        )
        fake.versions["111"] = CivitaiVersion("LORA", [("pixel.safetensors", BIG, "Model", True)])
        fake.versions["222"] = CivitaiVersion(
            "Checkpoint",
            [
                ("juggernaut.safetensors", BIG, "Model", False),
                ("juggernaut-pruned.safetensors", BIG2, "Model", False),
                ("vae.safetensors", SMALL, "VAE", False),
            ],
        )
        yield fake


@pytest.fixture(scope="module")
def server(hubs: FakeHubs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("sources")
    env = {"DEPMAN_HF_ENDPOINT": hubs.url, "DEPMAN_CIVITAI_ENDPOINT": hubs.url}
    with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp, extra_env=env) as running:
        yield running


def put(
    server: RunningServer, doc: dict[str, Any], dep_id: str | None = None
) -> tuple[str, int, Any]:
    dep_id = dep_id or uid("src")
    status, body = server.admin("PUT", f"/admin/deps/{dep_id}", {"kind": "dynamic", **doc})
    return dep_id, status, body


def test_hf_source_is_pinned_to_the_commit_of_main(server: RunningServer, hubs: FakeHubs) -> None:
    repo = hubs.repos["org/flux"]
    commit = repo.refs["main"]
    doc = {"url": "hf://org/flux/split/vae/ae.safetensors", "type": "vae"}
    dep_id, status, body = put(server, doc)
    assert status == 200, body
    assert body["revision"] == commit
    assert body["url"] == f"{hubs.url}/org/flux/resolve/{commit}/split/vae/ae.safetensors"
    assert (body["sha256"], body["expectedSizeBytes"]) == (sha(BIG), len(BIG))
    assert body["source"] == doc["url"]
    assert body["destRelativePath"] == "models/vae/ae.safetensors"

    # main moves on: putting the same entry again keeps the pinned bytes and asks nothing.
    repo.push({"split/vae/ae.safetensors": BIG2})
    asked = len(hubs.requests)
    _, status, again = put(server, doc, dep_id)
    assert status == 200 and again["revision"] == commit and again["sha256"] == sha(BIG)
    assert len(hubs.requests) == asked


def test_hf_source_at_a_named_revision(server: RunningServer, hubs: FakeHubs) -> None:
    first = hubs.repos["org/flux"].refs["v1"]
    _, status, body = put(
        server,
        {
            "url": "hf://org/flux/split/vae/ae.safetensors@v1",
            "type": "vae",
            "filename": "flux-ae.safetensors",
        },
    )
    assert status == 200, body
    assert body["revision"] == first and body["sha256"] == sha(BIG)
    assert body["destRelativePath"] == "models/vae/flux-ae.safetensors"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hf://org/flux/split/vae/missing.safetensors", "has no file 'split/vae/missing"),
        ("hf://org/flux/split/vae/ae.safetensors@nope", "RevisionNotFound"),
        ("hf://org/none/x.safetensors", "RepoNotFound"),
        ("hf://org", "use hf://ORG/REPO/PATH"),
        ("civitai://999", "Civitai model version 999 does not exist"),
        ("civitai://222", "has several files; name one as civitai://222/FILE_NAME"),
        ("civitai://abc", "use civitai://MODEL_VERSION_ID"),
    ],
)
def test_unresolvable_sources_are_refused_clearly(
    server: RunningServer, url: str, message: str
) -> None:
    dep_id, status, body = put(server, {"url": url, "type": "loras", "filename": "x.safetensors"})
    assert status == 422, body
    assert message in body["error"]["message"]
    assert server.admin("GET", f"/admin/deps/{dep_id}")[0] == 404


def test_hf_sha_given_by_hand_must_agree(server: RunningServer) -> None:
    _, status, body = put(
        server,
        {"url": "hf://org/flux/split/vae/ae.safetensors@v1", "type": "vae", "sha256": "0" * 64},
    )
    assert status == 422 and "differs from the source's" in body["error"]["message"]


def test_civitai_primary_file_fills_type_and_name(server: RunningServer, hubs: FakeHubs) -> None:
    _, status, body = put(server, {"url": "civitai://111", "auth": "civitai_token"})
    assert status == 200, body
    assert (body["type"], body["filename"]) == ("loras", "pixel.safetensors")
    assert body["destRelativePath"] == "models/loras/pixel.safetensors"
    assert (body["sha256"], body["expectedSizeBytes"]) == (sha(BIG), len(BIG))
    assert body["url"].startswith(f"{hubs.url}/api/download/models/111")
    assert body["revision"] == "111"


def test_civitai_version_with_several_files_by_name(server: RunningServer) -> None:
    _, status, body = put(server, {"url": "civitai://222/juggernaut-pruned.safetensors"})
    assert status == 200, body
    assert (body["type"], body["filename"]) == ("checkpoints", "juggernaut-pruned.safetensors")
    assert (body["sha256"], body["expectedSizeBytes"]) == (sha(BIG2), len(BIG2))
    _, status, body = put(server, {"url": "civitai://222/nope.safetensors"})
    assert status == 422 and "it has: juggernaut.safetensors" in body["error"]["message"]


def test_hf_folder_becomes_a_folder_model(server: RunningServer, hubs: FakeHubs) -> None:
    commit = hubs.repos["org/sdxl"].refs["main"]
    _, status, body = put(server, {"url": "hf://org/sdxl/unet/", "type": "diffusers"})
    assert status == 200, body
    assert body["destRelativePath"] == "models/diffusers/unet"
    files = {f["path"]: f for f in body["files"]}
    assert set(files) == {"model.safetensors", "config.json"}
    # config.json is kept in git (no LFS oid): the server fetched and hashed it.
    assert files["config.json"]["sha256"] == sha(SMALL)
    assert files["model.safetensors"]["sha256"] == sha(BIG)
    assert files["model.safetensors"]["url"].endswith(f"/resolve/{commit}/unet/model.safetensors")
    assert body["expectedSizeBytes"] == len(BIG) + len(SMALL)


def test_folder_model_files_from_sources(server: RunningServer) -> None:
    _, status, body = put(
        server,
        {
            "type": "text_encoders",
            "filename": "t5-split",
            "files": [
                {"path": "a.safetensors", "url": "hf://org/sdxl/vae/x.safetensors"},
                {"path": "b.safetensors", "url": "civitai://111"},
            ],
        },
    )
    assert status == 200, body
    assert [f["sha256"] for f in body["files"]] == [sha(BIG2), sha(BIG)]
    assert [f["source"] for f in body["files"]] == [
        "hf://org/sdxl/vae/x.safetensors",
        "civitai://111",
    ]


def test_apply_resolves_sources_in_a_fleet_file(server: RunningServer, tmp_path: Path) -> None:
    from tests.cli.helpers import run_cli, write_fleet

    path = write_fleet(
        tmp_path,
        """\
        deps:
          flux-vae: {url: "hf://org/flux/split/vae/ae.safetensors@v1", type: vae, kind: static}
        """,
    )
    result = run_cli(server, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    result = run_cli(server, "get", "deps")
    assert "hf://org/flux/split/vae/ae.safetensors@v1" in result.output
