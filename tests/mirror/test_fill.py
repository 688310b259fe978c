"""The fleet mirror on a real S3 API (moto's server): fill, hand out, refuse wrong bytes.

One server (SQLite, DEPMAN_MIRROR_FILL=manual) on an S3 bucket for the module; an
origin on loopback is every dep's upstream, and counts what it serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.mirror.helpers import (
    MiB,
    blob,
    depman_cli,
    fetch,
    installed,
    metric,
    put_dep,
    put_type,
    start_agents,
)
from tests.server.v1_client import V1Client
from tests.support.origin import ModelOrigin
from tests.support.s3 import S3Server
from tests.support.server import RunningServer, run_server
from tests.support.wait import wait_until

BUCKET = "fleet-mirror"
PREFIX = "depman/models"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def origin() -> Iterator[ModelOrigin]:
    with ModelOrigin() as running:
        yield running


@pytest.fixture(scope="module")
def server(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("mirror")
    env = s3.server_env(f"s3://{BUCKET}/{PREFIX}", DEPMAN_MIRROR_FILL="manual",
                        DEPMAN_MAINTENANCE_INTERVAL_SECONDS="0.5",
                        DEPMAN_MIRROR_PART_BYTES=str(5 * MiB),
                        DEPMAN_MIRROR_RETRY_SECONDS="600", DEPMAN_LOG_LEVEL="debug")
    with run_server(f"sqlite:///{tmp / 'depman.db'}", extra_env=env, cwd=tmp) as server:
        yield server


def entry(server: RunningServer, dep_id: str) -> dict[str, Any]:
    status, body = server.admin("GET", "/admin/mirror")
    assert status == 200, body
    return next(e for e in body["deps"] if e["depId"] == dep_id)


def test_fill_then_three_agents_and_a_field_agent_prefetch_from_the_mirror(
    server: RunningServer, s3: S3Server, origin: ModelOrigin, tmp_path: Path
) -> None:
    data, sha = blob(12 * MiB + 5)  # three parts of 5 MiB at most
    origin.add("/hf/big.bin", data)
    put_dep(server, "big", origin, "/hf/big.bin", data)
    assert entry(server, "big")["state"] == "missing"  # manual: nothing filled by itself

    out = depman_cli(server, "mirror", "fill", "big", "--wait")
    assert "1 stored in the mirror, 0 failed" in out, out
    key = f"{PREFIX}/sha256/{sha}"
    assert s3.keys(BUCKET) == [key]
    assert hashlib.sha256(s3.read(BUCKET, key)).hexdigest() == sha
    assert origin.bytes_served("/hf/big.bin") == len(data)  # fetched once
    status_out = depman_cli(server, "mirror", "status")
    assert "1 stored" in status_out and "agents fetch from 127.0.0.1" in status_out, status_out

    # Three new instances of a type prefetch it: every byte from the mirror.
    put_type(server, "mt", ["big"])
    agents = start_agents(server, tmp_path, "mt", 3)
    try:
        ids = [f"mt-i{n}" for n in range(3)]
        assert wait_until(lambda: all("big" in installed(server, i) for i in ids), 90), [
            a.log() for a in agents]
        for n in range(3):
            target = tmp_path / f"ws-mt-{n}" / "ComfyUI/models/checkpoints/big.safetensors"
            assert target.read_bytes() == data
    finally:
        for agent in agents:
            agent.__exit__(None, None, None)
    assert origin.bytes_served("/hf/big.bin") == len(data)  # zero upstream bytes since

    # A 0.2.0 field agent knows one URL: the mirror's, presigned.
    put(server, "/admin/instances/fa-020", {"ip": None, "serverType": "mt"})
    field = V1Client(server.base_url, "mt", server.shared_secret)
    field.register(instance_id="fa-020", agent_version="0.2.0")
    field.heartbeat()
    items = field.poll()
    assert [i["depId"] for i in items] == ["big"]
    resolved = items[0]["resolved"]
    assert resolved["url"].startswith(s3.endpoint_url + f"/{BUCKET}/{PREFIX}/sha256/{sha}?")
    assert "X-Amz-Signature=" in resolved["url"] and resolved["auth"] == "none"
    assert resolved["mirror"] is True and resolved["sources"] == [origin.url("/hf/big.bin")]
    checked = field.queue_item(items[0]["itemId"])["item"]["resolved"]  # 0.9.14+'s item check
    assert checked["mirror"] is True and "X-Amz-Signature=" in checked["url"]
    field.status(items[0], "running")
    assert hashlib.sha256(fetch(resolved["url"])).hexdigest() == sha
    field.status(items[0], "succeeded")
    field.installed_static.append("big")
    field.heartbeat()
    assert origin.bytes_served("/hf/big.bin") == len(data)

    # Accounting: four downloads served by the mirror, none by the upstream.
    assert metric(server, 'depman_source_bytes_total{kind="mirror"}') == 4 * len(data)
    assert metric(server, 'depman_source_bytes_total{kind="upstream"}') == 0
    _status, body = server.admin("GET", "/admin/instances/fa-020")
    assert body["sourceBytes"] == {"mirror": len(data), "upstream": 0}


def test_wrong_bytes_never_become_an_object(
    server: RunningServer, s3: S3Server, origin: ModelOrigin
) -> None:
    data, sha = blob(6 * MiB)
    origin.add("/hf/liar.bin", data, corrupt="always")  # right length, other bytes
    put_dep(server, "liar", origin, "/hf/liar.bin", data)
    before = set(s3.keys(BUCKET))
    out = depman_cli(server, "mirror", "fill", "liar")
    assert "Asked the server to fill 1 deps" in out
    assert wait_until(lambda: entry(server, "liar")["state"] == "failed", 60)
    shown = entry(server, "liar")
    assert "sha256 mismatch" in shown["error"] and shown["nextAttemptAt"]
    assert set(s3.keys(BUCKET)) == before
    assert f"{PREFIX}/sha256/{sha}" not in s3.uploads(BUCKET)  # the upload was aborted
    assert "failed" in depman_cli(server, "mirror", "status")
    logs = server.logs()  # at debug level, after fills and presigned hand-outs
    assert "test-secret-key" not in logs and "Authorization" not in logs
    assert "X-Amz-Signature" not in logs and "AKIATESTMIRROR" not in logs


def test_a_fill_waits_out_a_short_429(
    server: RunningServer, s3: S3Server, origin: ModelOrigin
) -> None:
    data, sha = blob(MiB)
    origin.add("/hf/busy.bin", data)
    origin.fail_next("/hf/busy.bin", 429, count=2, retry_after=1)
    put_dep(server, "busy", origin, "/hf/busy.bin", data)
    depman_cli(server, "mirror", "fill", "busy", "--wait")
    assert f"{PREFIX}/sha256/{sha}" in s3.keys(BUCKET)
    assert len(origin.requests_for("/hf/busy.bin")) == 3  # two 429s, then the file


def test_a_dep_without_sha256_is_refused(server: RunningServer, origin: ModelOrigin) -> None:
    origin.add("/hf/nosha.bin", b"x" * 100)
    status, body = server.admin("PUT", "/admin/deps/nosha", {
        "url": origin.url("/hf/nosha.bin"), "auth": "none", "kind": "dynamic",
        "destRelativePath": "models/loras/nosha.bin"})
    assert status == 200, body
    status, body = server.admin("POST", "/admin/mirror/fill", {"depIds": ["nosha", "ghost"]})
    assert status == 200, body
    assert body["requested"] == []
    assert "no sha256" in body["refused"]["nosha"] and body["refused"]["ghost"] == "no such dep"


def put(server: RunningServer, path: str, body: dict[str, Any]) -> None:
    status, answer = server.admin("PUT", path, body)
    assert status == 200, answer


def test_a_jobs_download_from_the_mirror_is_counted_for_the_job(
    server: RunningServer, s3: S3Server, origin: ModelOrigin
) -> None:
    data, _sha = blob(MiB)
    origin.add("/hf/lora.bin", data)
    put_dep(server, "lora", origin, "/hf/lora.bin", data, kind="dynamic",
            destRelativePath="models/loras/lora.safetensors")
    depman_cli(server, "mirror", "fill", "lora", "--wait")
    put_type(server, "jt", [])
    put(server, "/admin/instances/fa-job", {"ip": None, "serverType": "jt"})
    field = V1Client(server.base_url, "jt", server.shared_secret)
    field.register(instance_id="fa-job", agent_version="0.9.20")
    field.heartbeat()
    status, job = server.admin("POST", "/jobs", {"serverType": "jt", "depIds": ["lora"]})
    assert status == 200, job
    [item] = field.poll()
    field.status(item, "running")
    assert fetch(item["resolved"]["url"]) == data
    field.status(item, "succeeded")
    field.installed_dynamic.append("lora")
    field.heartbeat()
    status, body = server.admin("GET", f"/jobs/{job['jobId']}")
    assert body["sourceBytes"] == {"mirror": len(data), "upstream": 0}, body
    jobs_out = depman_cli(server, "get", "jobs")
    assert "MIRROR / UPSTREAM" in jobs_out and "1.0 MiB / 0 B" in jobs_out, jobs_out
    with httpx.Client(base_url=server.root_url, follow_redirects=True) as browser:
        browser.post("/login", data={"token": server.admin_token, "next": "/"})
        page = browser.get("/").text
    assert "Upstream bytes" in page and "mirror served 100%" in page, page


def test_the_depman_agents_byte_counts_are_stored_as_sent(
    server: RunningServer, origin: ModelOrigin
) -> None:
    data, _sha = blob(1000)
    origin.add("/hf/counted.bin", data)
    put_dep(server, "counted", origin, "/hf/counted.bin", data)
    put_type(server, "ct", ["counted"])
    put(server, "/admin/instances/ct-1", {"ip": None, "serverType": "ct"})
    client = V1Client(server.base_url, "ct", server.shared_secret)
    client.register(instance_id="ct-1", agent_version="depman/0.3")
    [item] = client.poll()

    def report(state: str, **extra: Any) -> tuple[int, Any]:
        return server.request("POST", "/api/dependencies/status", {
            "instanceId": "ct-1", "itemId": item["itemId"], "depId": "counted",
            "state": state, **extra}, {"Authorization": f"Bearer {client.token}"})

    status, body = report("succeeded", bytesBySource={"mirror": -1, "upstream": 0})
    assert status == 422, body
    status, body = report("running")
    assert status == 200, body
    # An unknown kind (a later agent's) is accepted and kept out of the accounting.
    status, body = report("succeeded", servedBy={"kind": "cdn", "host": "x" * 400},
                          bytesBySource={"mirror": 300, "upstream": 1700})
    assert status == 200 and body["applied"], body
    status, again = report("succeeded", bytesBySource={"mirror": 300, "upstream": 1700})
    assert status == 200 and not again["applied"]  # a repeated report counts once
    _status, shown = server.admin("GET", "/admin/instances/ct-1")
    assert shown["sourceBytes"] == {"mirror": 300, "upstream": 1700}
