"""Item ids that are not ours and upstream answers of the wrong shape: 4xx and 502, never a 500.

On SQLite and PostgreSQL. The broken Hugging Face and Civitai answers come from
the loopback fake hubs the server resolves against (`raw_answers`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

import pytest

from tests.server.fleet import make_fleet
from tests.server.hostile import assert_error_shape
from tests.support.server import RunningServer, shared_fake_hubs

FAKE_COMMIT = "a" * 40  # the commit the auto-serving fake Hub answers for any repo
SHA = "ab" * 32


@pytest.mark.parametrize(
    "generation",
    ["²", "①", "٣", "1²", "+1", " 1", "2147483648", "9223372036854775808", "9" * 19, "9" * 400],
)
def test_item_ids_with_odd_generations_are_refused(server: RunningServer, generation: str) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("odd-ids"))
    dep = fleet.deps["b"]
    assert fleet.submit(["b"])[0] == 200
    [item] = agent.poll()[1]["items"]
    odd = dict(item, itemId=f"{dep}.{generation}")
    for state in ("running", "failed", "retrying", "succeeded"):
        status, body = agent.status(odd, state, error="x")
        assert 400 <= status < 500, (generation, state, status, body)
        assert_error_shape(body)
    status, body = server.request(
        "GET",
        f"/api/dependencies/queue-item?instanceId={agent.instance_id}"
        f"&itemId={quote(f'{dep}.{generation}')}",
        headers=agent.auth,
    )
    # Not an item of this server: the 404 `exists: false` field agents drop their retry on
    # (an id with whitespace or past 300 characters is refused as malformed).
    assert status in (404, 422), (generation, status, body)
    assert status == 422 or body.get("exists") is False, body
    # The real item is untouched and still reportable.
    assert agent.status(item, "running")[0] == 200
    assert "Traceback" not in server.logs()


def test_the_largest_generation_is_a_plain_unknown_item(server: RunningServer) -> None:
    fleet = make_fleet(server)
    agent = fleet.register(fleet.add_instance("big-gen"))
    assert fleet.submit(["b"])[0] == 200
    [item] = agent.poll()[1]["items"]
    largest = dict(item, itemId=f"{fleet.deps['b']}.{2**31 - 1}")
    status, body = agent.status(largest, "running")
    assert status == 200 and body.get("applied") is False, body


def _version() -> str:
    return str(10**12 + secrets.randbelow(10**12))


def _civitai_file(**changes: Any) -> dict[str, Any]:
    doc = {
        "id": 1,
        "name": "m.safetensors",
        "type": "Model",
        "primary": True,
        "sizeKB": 10.0,
        "hashes": {"SHA256": SHA.upper()},
        "downloadUrl": "http://127.0.0.1:9/api/download/models/1",
    }
    doc.update(changes)
    return doc


CIVITAI_ANSWERS: dict[str, bytes] = {
    "a list body": b"[1, 2]",
    "files not a list": json.dumps({"files": {"a": 1}}).encode(),
    "hashes as a list": json.dumps({"files": [_civitai_file(hashes=[SHA])]}).encode(),
    "sizeKB 1e30": json.dumps({"files": [_civitai_file(sizeKB=1e30)]}).encode(),
    "sizeKB NaN": json.dumps({"files": [_civitai_file(sizeKB=float("nan"))]}).encode(),
    "sizeKB Infinity": json.dumps({"files": [_civitai_file(sizeKB=float("inf"))]}).encode(),
    "sizeKB a string": json.dumps({"files": [_civitai_file(sizeKB="10")]}).encode(),
    "SHA256 not hex": json.dumps({"files": [_civitai_file(hashes={"SHA256": "zz"})]}).encode(),
    "model a string": json.dumps({"files": [_civitai_file()], "model": "LORA"}).encode(),
}


@pytest.mark.parametrize("case", list(CIVITAI_ANSWERS))
def test_malformed_civitai_answers_are_502(server: RunningServer, case: str) -> None:
    version = _version()
    shared_fake_hubs().raw_answers[f"/api/v1/model-versions/{version}"] = CIVITAI_ANSWERS[case]
    doc = {"url": f"civitai://{version}", "kind": "dynamic", "type": "loras"}
    status, body = server.admin("PUT", f"/admin/deps/civ-{version}", doc)
    assert status == 502, (case, status, body)
    assert body["error"]["code"] == "source_unavailable", body
    assert "Traceback" not in server.logs()


def _hf_entry(**lfs: Any) -> dict[str, Any]:
    return {"type": "file", "path": "m.safetensors", "size": 134, "lfs": {"oid": SHA, **lfs}}


HF_PATHS_INFO: dict[str, Any] = {
    "lfs.size 2^70": [_hf_entry(size=2**70)],
    "lfs.size negative": [_hf_entry(size=-1)],
    "lfs.size a float": [_hf_entry(size=1.5)],
    "lfs.size true": [_hf_entry(size=True)],
    "lfs.oid not a sha256": [_hf_entry(oid="xyz", size=10)],
    "an object, not a list": {"path": "m.safetensors"},
    "an entry not an object": ["m.safetensors"],
    "path a number": [{"type": "file", "path": 5, "size": 3}],
}


@pytest.mark.parametrize("case", list(HF_PATHS_INFO))
def test_malformed_hub_answers_are_502(server: RunningServer, case: str) -> None:
    repo = f"org/broken-{secrets.token_hex(4)}"
    shared_fake_hubs().raw_answers[f"/api/models/{repo}/paths-info/{FAKE_COMMIT}"] = json.dumps(
        HF_PATHS_INFO[case]
    ).encode()
    doc = {"url": f"hf://{repo}/m.safetensors", "kind": "dynamic", "type": "loras"}
    status, body = server.admin("PUT", f"/admin/deps/hf-{repo.split('/')[1]}", doc)
    assert status == 502, (case, status, body)
    assert body["error"]["code"] == "source_unavailable", body


@pytest.mark.parametrize("answer", [b"[]", b'{"sha": 5}', b'{"sha": ""}', b'"main"'])
def test_malformed_hub_revisions_are_502(server: RunningServer, answer: bytes) -> None:
    repo = f"org/rev-{secrets.token_hex(4)}"
    shared_fake_hubs().raw_answers[f"/api/models/{repo}/revision/main"] = answer
    doc = {"url": f"hf://{repo}/m.safetensors", "kind": "dynamic", "type": "loras"}
    status, body = server.admin("PUT", f"/admin/deps/rev-{repo.split('/')[1]}", doc)
    assert status == 502, (answer, status, body)
    assert body["error"]["code"] == "source_unavailable", body
