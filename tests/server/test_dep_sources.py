"""A catalog entry's further sources, and resolution kept out of the write transaction."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.running import AgentProcess
from tests.server.fleet import make_fleet, uid
from tests.support.hubs import FakeHubs, content_of
from tests.support.server import RunningServer, run_server, shared_fake_hubs
from tests.support.wait import wait_until

AUTO_FILE = "org/m/unet.safetensors"
AUTO_BYTES = content_of(AUTO_FILE)  # what the shared auto Hub serves for it


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(**extra: Any) -> dict[str, Any]:
    return {
        "url": "https://origin.test/unet.safetensors",
        "type": "checkpoints",
        "filename": f"{uid('unet')}.safetensors",
        "kind": "dynamic",
        "sha256": sha(AUTO_BYTES),
        **extra,
    }


def test_sources_are_resolved_stored_shown_and_handed_to_agents(server: RunningServer) -> None:
    dep_id = uid("src")
    sources = [f"hf://{AUTO_FILE}", "https://mirror.test/files/unet.safetensors"]
    status, body = server.admin("PUT", f"/admin/deps/{dep_id}", entry(sources=sources))
    assert status == 200, body
    assert body["sources"] == sources
    hf, https = body["resolvedSources"]
    assert hf["source"] == sources[0]
    assert hf["url"].endswith("/org/m/resolve/" + "a" * 40 + "/unet.safetensors")
    assert (hf["sha256"], hf["sizeBytes"]) == (sha(AUTO_BYTES), len(AUTO_BYTES))
    assert (https["url"], https["source"], https["sha256"]) == (sources[1], None, None)
    # The hf:// source gave the size the entry did not state.
    assert body["expectedSizeBytes"] == len(AUTO_BYTES)

    # Put again: the resolved source is kept as it was, the Hub is not asked.
    asked = len(shared_fake_hubs().requests)
    status, again = server.admin("PUT", f"/admin/deps/{dep_id}", entry(sources=sources))
    assert status == 200 and again["resolvedSources"] == body["resolvedSources"], again
    assert len(shared_fake_hubs().requests) == asked

    status, listed = server.admin("GET", "/admin/deps")
    assert [d["sources"] for d in listed["deps"] if d["depId"] == dep_id] == [sources]

    # Agents get the download URLs in order, after `url`.
    fleet = make_fleet(server, sizes={"a": (1000, "dynamic")})
    fleet.deps["s"] = dep_id
    agent = fleet.register(fleet.add_instance("src"))
    status, job = fleet.submit(["s"])
    assert status in (200, 201), job
    status, queue = agent.poll()
    assert status == 200, queue
    (item,) = [i for i in queue["items"] if i["depId"] == dep_id]
    assert item["resolved"]["url"] == "https://origin.test/unet.safetensors"
    assert item["resolved"]["sources"] == [hf["url"], https["url"]]


def test_status_reports_carry_where_the_bytes_came_from(server: RunningServer) -> None:
    fleet = make_fleet(server, sizes={"a": (1000, "dynamic")})
    agent = fleet.register(fleet.add_instance("acct"))
    status, job = fleet.submit(["a"])
    assert status in (200, 201), job
    _, queue = agent.poll()
    (item,) = queue["items"]
    base = {"instanceId": agent.instance_id, "itemId": item["itemId"], "depId": item["depId"],
            "op": "download", "diskStats": {"totalBytes": 10, "freeBytes": 5, "usedBytes": 5},
            "dynamicBytesUsed": 0}
    url = "/api/dependencies/status"
    too_many = [{"host": "h.test", "reason": "http_5xx"}] * 65
    status, body = server.request("POST", url, {**base, "state": "running",
                                               "badSources": too_many}, agent.auth)
    assert status == 422, body
    status, body = server.request("POST", url, {**base, "state": "running",
                                               "bytesBySource": {"mirror": -1}}, agent.auth)
    assert status == 422, body
    before = _metric(server, "other")
    report = {
        **base,
        "state": "succeeded",
        "servedBy": {"kind": "upstream", "host": "hf.test"},
        "bytesBySource": {"mirror": 0, "upstream": 2000},
        "badSources": [{"host": "a.test", "reason": "sha256_mismatch"},
                       {"host": "b.test", "reason": "a-reason-from-a-later-agent"}],
    }
    status, body = server.request("POST", url, report, agent.auth)
    assert status == 200, body
    assert _metric(server, "other") == before + 1
    assert _metric(server, "sha256_mismatch") >= 1


def _metric(server: RunningServer, reason: str) -> float:
    with urllib.request.urlopen(server.root_url + "/metrics") as resp:
        text = resp.read().decode()
    found = re.search(rf'^depman_bad_sources_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sources": ["hf://org/m/other.safetensors"]}, "serves other bytes"),
        ({"sources": [f"hf://{AUTO_FILE}"], "expectedSizeBytes": 7}, "serves other bytes"),
        ({"sources": ["https://mirror.test/a"], "sha256": None}, "sources need the entry's sha256"),
        ({"sources": ["https://origin.test/unet.safetensors"]}, "listed twice"),
        ({"sources": ["ftp://mirror.test/a"]}, "sources"),
        ({"sources": ["hf://org/m/folder/"]}, "one file, not a folder"),
    ],
)
def test_a_source_that_cannot_be_the_same_bytes_is_refused(
    server: RunningServer, extra: dict[str, Any], message: str
) -> None:
    doc = {k: v for k, v in entry(**extra).items() if v is not None}
    status, body = server.admin("PUT", f"/admin/deps/{uid('bad')}", doc)
    assert status == 422, body
    assert message in body["error"]["message"]


def test_apply_warns_about_entries_without_sha256(server: RunningServer) -> None:
    bare, pinned = uid("bare"), uid("pinned")
    doc = {k: v for k, v in entry().items() if k != "sha256"}
    status, body = server.admin("POST", "/admin/fleet", {"deps": {bare: doc, pinned: entry()}})
    assert status == 200, body
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith(f"deps.{bare}: no sha256")


# --- resolution outside the write transaction -------------------------------------


@pytest.fixture(scope="module")
def slow_hub() -> Iterator[FakeHubs]:
    with FakeHubs() as hubs:
        hubs.repo("org/slow").push({"model.safetensors": b"s" * 500})
        hubs.repo("org/huge").push({f"part/{n:04}.json": b"{}" for n in range(1500)})
        yield hubs


@pytest.fixture(scope="module")
def slow_hub_server(
    slow_hub: FakeHubs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("slowhub")
    env = {"DEPMAN_HF_ENDPOINT": slow_hub.url, "DEPMAN_CIVITAI_ENDPOINT": slow_hub.url}
    with run_server(f"sqlite:///{tmp / 'depman.db'}", cwd=tmp, extra_env=env) as server:
        yield server


def test_a_slow_hub_never_holds_the_writer(
    slow_hub_server: RunningServer, slow_hub: FakeHubs, tmp_path: Path
) -> None:
    """While the Hub takes its time with a PUT's hf:// source (8 s for each of its two
    calls), a real agent's heartbeats, heartbeats that change the inventory (written at
    once) and other catalog writes complete: the resolution runs before the write session."""
    fleet = make_fleet(slow_hub_server, sizes={"a": (1000, "dynamic")})
    agents = [fleet.register(fleet.add_instance(f"beat{n}")) for n in range(3)]
    real_id = fleet.add_instance("real")
    env = {
        "FCS_API_BASE_URL": slow_hub_server.base_url, "SERVER_TYPE": fleet.server_type,
        "DEPENDENCY_MANAGER_SHARED_SECRET": slow_hub_server.shared_secret,
        "DM_INSTANCE_ID": real_id, "WORKSPACE": str(tmp_path / "ws"),
        "DM_HEARTBEAT_SECONDS": "0.5", "DM_POLL_SECONDS": "0.5",
    }

    def last_beat() -> Any:
        _, body = slow_hub_server.admin("GET", f"/admin/instances/{real_id}")
        return body["dependencyManager"]["lastHeartbeatAt"]

    answered: list[tuple[int, Any]] = []
    put = threading.Thread(
        target=lambda: answered.append(
            slow_hub_server.admin(
                "PUT",
                f"/admin/deps/{uid('slow')}",
                {"url": "hf://org/slow/model.safetensors", "type": "loras", "kind": "dynamic"},
            )
        )
    )
    with AgentProcess(env) as real:
        real.wait_for_line(rf"Registered dependency agent: instanceId={real_id}")
        slow_hub.hold_seconds = 8.0
        slow_hub.arrived.clear()
        slow_hub.release.clear()
        put.start()
        try:
            assert slow_hub.arrived.wait(30), "the PUT never asked the Hub"
            # The real agent's next heartbeat is recorded meanwhile.
            seen = last_beat()
            assert wait_until(lambda: last_beat() != seen, 5), "no heartbeat recorded"
            for round_ in range(3):
                for agent in agents:
                    # A changed inventory: the heartbeat is written, not answered from memory.
                    agent.installed_dynamic = [fleet.deps["a"]] if round_ % 2 == 0 else []
                    status, body = agent.heartbeat()
                    assert status == 200, body
            status, body = slow_hub_server.admin(
                "PUT", f"/admin/deps/{uid('plain')}",
                entry(url="https://origin.test/p.safetensors"),
            )
            assert status == 200, body
            # All of it answered while the PUT still waits for the Hub.
            assert put.is_alive() and not answered
        finally:
            slow_hub.release.set()
            put.join(30)
            slow_hub.hold_seconds = 0.0
    assert answered and answered[0][0] == 200, answered


def test_a_folder_over_the_file_limit_is_refused_before_asking_per_file(
    slow_hub_server: RunningServer, slow_hub: FakeHubs
) -> None:
    before = len(slow_hub.requests)
    status, body = slow_hub_server.admin(
        "PUT",
        f"/admin/deps/{uid('huge')}",
        {"url": "hf://org/huge/part/", "type": "diffusers", "kind": "dynamic"},
    )
    assert status == 422, body
    assert "1500 files" in body["error"]["message"]
    assert len(slow_hub.requests) - before <= 3  # the revision and the listing, not 1,500


@pytest.mark.parametrize("url", ["http://[::1", "hf://", "civitai://x", "http:///nohost"])
def test_a_malformed_source_is_a_clear_422(server: RunningServer, url: str) -> None:
    status, body = server.admin("PUT", f"/admin/deps/{uid('mal')}", entry(sources=[url]))
    assert status == 422, body
    assert "source" in body["error"]["message"]
